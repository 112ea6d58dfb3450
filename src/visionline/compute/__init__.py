"""Where training runs, behind one small interface: a local subprocess (the embedded
default) or a Kubernetes Job. ``visionline.backends.compute_backend`` picks one from the
config; nothing else names a concrete backend.

Every backend runs the same entry point, ``python -m visionline.training --config URI
--run-id ID``, which resumes a run from its last checkpoint, so a cancelled, evicted or
crashed run is continued by submitting the same plan again.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from visionline.config import PipelineConfig
from visionline.storage import ArtifactStore

if TYPE_CHECKING:
    from visionline.training.plan import RunPlan

SUCCEEDED = "succeeded"
FAILED = "failed"


class RunHandle(Protocol):
    """One submitted training run."""

    run_id: str
    failure: str | None  # why it failed, in words an operator acts on

    def poll(self) -> str | None:
        """None while running, else ``succeeded`` or ``failed``."""

    def wait(self, timeout: float | None = None) -> None:
        """Block until the run ends; raise TrainingError with the reason if it failed."""

    def cancel(self) -> None:
        """Stop the run (its checkpoints stay: submitting the plan again resumes it)."""


class ComputeBackend(Protocol):
    def submit(
        self, plan: RunPlan, store: ArtifactStore, origin: dict[str, str] | None = None
    ) -> RunHandle:
        """Start ``plan`` and return at once; ``origin`` is recorded in run.json."""

    def train(
        self, plan: RunPlan, store: ArtifactStore, origin: dict[str, str] | None = None
    ) -> None:
        """Run ``plan`` to completion, or raise TrainingError."""


def config_key(cfg: PipelineConfig) -> str:
    """Where ``publish_config`` puts ``cfg``: content-addressed (the whole config,
    execution settings included), so a dry run can name it without writing it."""
    return f"configs/{hashlib.sha256(cfg.to_yaml().encode()).hexdigest()[:16]}.yaml"


def publish_config(cfg: PipelineConfig, store: ArtifactStore) -> str:
    """Write the resolved config where any worker can read it; return its URI.
    The same config is written once."""
    key = config_key(cfg)
    if not store.exists(key):
        store.put_bytes(key, cfg.to_yaml().encode())
    return store.url(key)


def trainer_args(
    config_uri: str, run_id: str, store_uri: str | None, origin: dict[str, str] | None
) -> list[str]:
    """The trainer's arguments after ``python -m visionline.training``."""
    args = ["--config", config_uri, "--run-id", run_id]
    if store_uri:
        args += ["--store", store_uri]
    for key, value in sorted((origin or {}).items()):
        args += ["--origin", f"{key}={value}"]
    return args


_waited: set[Any] = set()  # the runs this process is waiting for
_waited_lock = threading.Lock()


@contextlib.contextmanager
def waiting_for(run: RunHandle) -> Iterator[None]:
    """Mark ``run`` as waited for, so that ``cancel_waited_runs`` finds it."""
    with _waited_lock:
        _waited.add(run)
    try:
        yield
    finally:
        with _waited_lock:
            _waited.discard(run)


def cancel_waited_runs() -> list[str]:
    """Cancel every run this process is waiting for (the flows' ``on_cancellation``
    hook: a cancelled flow run stops its training run); the ids of those cancelled."""
    with _waited_lock:
        runs = list(_waited)
    for run in runs:
        run.cancel()
    return [r.run_id for r in runs]
