"""Typed errors. Each one says what went wrong and what to do about it."""

from __future__ import annotations

import signal

# Exit codes every visionline process agrees on (a Job's podFailurePolicy, the CLI, the
# init container and the trainer read the same numbers).
EXIT_FAILED = 1  # the step ran and said no (a gate, a validation, a serving check)
EXIT_USAGE = 2  # a visionline error the user can fix by changing the command
EXIT_DRIFT = 3  # `monitor check`: the window drifted
# A configuration error: retrying cannot help, so a Kubernetes podFailurePolicy fails the
# Job at once on it (EX_CONFIG from sysexits.h).
EXIT_CONFIG_ERROR = 78
EXIT_PREEMPTED = 128 + signal.SIGTERM  # what a process killed by SIGTERM reports


class VisionlineError(Exception):
    """Base class for every error visionline raises on purpose."""


class ConfigError(VisionlineError):
    """A config file or value is invalid; the message names the key."""


class StoreError(VisionlineError):
    """The artifact store could not complete an operation."""


class BucketNotFoundError(StoreError):
    pass


class CredentialsError(StoreError):
    pass


class KeyNotFoundError(StoreError):
    pass


class IntegrityError(StoreError):
    """Stored bytes do not match their recorded sha256."""


class IngestError(VisionlineError):
    """The ingestion source is unusable (missing, empty, malformed CSV...)."""


class DataValidationError(VisionlineError):
    """The dataset failed its Great Expectations suite.

    ``failures`` holds one entry per failed expectation, each with the files it names.
    """

    def __init__(self, message: str, failures: list[dict] | None = None) -> None:
        super().__init__(message)
        self.failures = failures or []


class TrainingError(VisionlineError):
    pass


class Preempted(TrainingError):
    """The run stopped on SIGTERM after checkpointing; running it again resumes it.
    Raised by the trainer in-process and by a backend whose trainer process it stopped."""


class TuningError(VisionlineError):
    """A search could not run or finish (a broken study journal, no finished trial)."""


class GateFailedError(VisionlineError):
    pass


class ServingError(VisionlineError):
    pass


class MonitoringError(VisionlineError):
    """Monitoring cannot answer (no reference, no captures, bad window...); says why."""
