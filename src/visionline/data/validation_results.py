"""What a validation found and where it is stored, without Great Expectations: a
stored result is read (by training, lineage, the flows) far more often than the suite
runs, and importing GX takes seconds.

A run's results live under ``reports/validation/<dataset>/<version>/<run>/``
(``result.json``, ``data_docs/``); ``LATEST`` there names the newest run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from visionline.config import PipelineConfig
from visionline.data.manifest import DatasetRef
from visionline.errors import DataValidationError
from visionline.storage import ArtifactStore

MAX_LISTED = 10


@dataclass
class Failure:
    check: str
    expectation: str
    column: str | None
    unexpected_count: int
    offending: list[str]


@dataclass
class ValidationReport:
    dataset: str
    success: bool
    evaluated: int
    failures: list[Failure] = field(default_factory=list)
    report_prefix: str | None = None
    docs_url: str | None = None

    def summary(self) -> str:
        head = "PASSED" if self.success else "FAILED"
        lines = [
            f"validation of {self.dataset}: {head} "
            f"({self.evaluated - len(self.failures)}/{self.evaluated} expectations met)"
        ]
        for f in self.failures:
            where = f" [{f.column}]" if f.column else ""
            lines.append(f"  x {f.check}{where}: {f.unexpected_count} offending ({f.expectation})")
            for name in f.offending[:MAX_LISTED]:
                lines.append(f"      - {name}")
            if f.unexpected_count > MAX_LISTED:
                lines.append(f"      ... and {f.unexpected_count - MAX_LISTED} more")
        if self.docs_url:
            lines.append(f"Data Docs: {self.docs_url}")
        return "\n".join(lines)

    def raise_for_failure(self) -> None:
        if not self.success:
            raise DataValidationError(self.summary(), failures=[f.__dict__ for f in self.failures])


def validation_fingerprint(cfg: PipelineConfig, classes: list[str]) -> str:
    """What a validation result depends on besides the (immutable) dataset version."""
    blob = json.dumps(
        {"validation": cfg.validation.model_dump(mode="json"), "classes": classes}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def reports_prefix(ref: DatasetRef) -> str:
    return f"reports/validation/{ref.name}/{ref.version}"


def latest_result_prefix(store: ArtifactStore, ref: DatasetRef) -> str | None:
    """Where the newest validation of ``ref`` is stored (result.json, data_docs/), if any."""
    latest = f"{reports_prefix(ref)}/LATEST"
    return (
        f"{reports_prefix(ref)}/{store.get_bytes(latest).decode().strip()}"
        if store.exists(latest)
        else None
    )
