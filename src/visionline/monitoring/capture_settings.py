"""What the serving worker's capture is told: its settings, the names of the monitoring
files in a model archive, and where captured records go in the store.

Settings travel in the archive (``monitor.json``, from the config the model was
packaged with); the serving environment may override each of them (``ENV``):
``VISIONLINE_CAPTURE_STORE`` (a store URI, or ``off``), ``VISIONLINE_CAPTURE_SAMPLE_RATE``,
``VISIONLINE_CAPTURE_IMAGES`` (true or false), ``VISIONLINE_CAPTURE_QUEUE_SIZE``,
``VISIONLINE_CAPTURE_FLUSH_RECORDS``, ``VISIONLINE_CAPTURE_FLUSH_INTERVAL_S`` and
``VISIONLINE_CAPTURE_MAX_QUEUE_MB``. Records are written under

    captures/<model>/<version>/<YYYY-MM-DD>/<HHMMSSffffff>-<pid>-<seq>.parquet
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from visionline.config import PipelineConfig

MONITOR_FILE = "monitor.json"
PROJECTION_FILE = "projection.npy"
STORE_ENV = "VISIONLINE_CAPTURE_STORE"
RATE_ENV = "VISIONLINE_CAPTURE_SAMPLE_RATE"
IMAGES_ENV = "VISIONLINE_CAPTURE_IMAGES"
# each setting's variable in the serving environment
ENV = {
    "store": STORE_ENV,
    "sample_rate": RATE_ENV,
    "capture_images": IMAGES_ENV,
    "queue_size": "VISIONLINE_CAPTURE_QUEUE_SIZE",
    "flush_records": "VISIONLINE_CAPTURE_FLUSH_RECORDS",
    "flush_interval_s": "VISIONLINE_CAPTURE_FLUSH_INTERVAL_S",
    "max_queue_mb": "VISIONLINE_CAPTURE_MAX_QUEUE_MB",
}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _parse(field: str, text: str) -> Any:
    """One variable's value as the setting's type, or a ValueError naming it."""
    var, value = ENV[field], text.strip().lower()
    if field == "store":
        return text.strip()
    if field == "capture_images":
        if value not in _TRUE + _FALSE:
            raise ValueError(f"{var}={text}: must be true or false")
        return value in _TRUE
    try:
        number = int(value) if field in ("queue_size", "flush_records") else float(value)
    except ValueError:
        raise ValueError(f"{var}={text}: not a number") from None
    if field == "sample_rate" and not 0.0 <= number <= 1.0:
        raise ValueError(f"{var}={text}: must be within [0, 1]")
    if field != "sample_rate" and not number > 0:
        raise ValueError(f"{var}={text}: must be above 0")
    return number


@dataclass(frozen=True)
class CaptureSettings:
    sample_rate: float
    capture_images: bool
    store: str | None  # None or "off": capture disabled
    queue_size: int
    flush_records: int
    flush_interval_s: float
    max_queue_mb: float = 64.0  # archives packaged before the setting get the default

    @classmethod
    def from_config(cls, cfg: PipelineConfig, store_uri: str) -> CaptureSettings:
        m = cfg.monitor
        return cls(
            m.sample_rate,
            m.capture_images,
            m.store or store_uri,
            m.queue_size,
            m.flush_records,
            m.flush_interval_s,
            m.max_queue_mb,
        )

    def with_environment(self, env: dict[str, str]) -> CaptureSettings:
        """These settings with each one the serving environment sets (``ENV``) replaced:
        how an operator changes capture without packaging the model again."""
        changes = {
            f.name: _parse(f.name, env[ENV[f.name]]) for f in fields(self) if env.get(ENV[f.name])
        }
        out = replace(self, **changes)
        if out.flush_records > out.queue_size:
            raise ValueError(
                f"flush_records ({out.flush_records}) must not exceed queue_size "
                f"({out.queue_size}): check {ENV['flush_records']} and {ENV['queue_size']}"
            )
        return out

    @property
    def enabled(self) -> bool:
        return self.sample_rate > 0 and bool(self.store) and self.store != "off"


def capture_prefix(model: str, version: str | None = None) -> str:
    return f"captures/{model}/" + (f"{version}/" if version else "")
