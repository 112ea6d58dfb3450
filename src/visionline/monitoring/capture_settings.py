"""What the serving worker's capture is told: its settings, the names of the monitoring
files in a model archive, and where captured records go in the store.

Settings travel in the archive (``monitor.json``); the serving environment may
override two of them: ``VISIONLINE_CAPTURE_STORE`` (a store URI, or ``off``) and
``VISIONLINE_CAPTURE_SAMPLE_RATE``. Records are written under

    captures/<model>/<version>/<YYYY-MM-DD>/<HHMMSSffffff>-<pid>-<seq>.parquet
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from visionline.config import PipelineConfig

MONITOR_FILE = "monitor.json"
PROJECTION_FILE = "projection.npy"
STORE_ENV = "VISIONLINE_CAPTURE_STORE"
RATE_ENV = "VISIONLINE_CAPTURE_SAMPLE_RATE"


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
        out = self
        if env.get(STORE_ENV):
            out = replace(out, store=env[STORE_ENV])
        if env.get(RATE_ENV):
            rate = float(env[RATE_ENV])
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{RATE_ENV}={env[RATE_ENV]}: must be within [0, 1]")
            out = replace(out, sample_rate=rate)
        return out

    @property
    def enabled(self) -> bool:
        return self.sample_rate > 0 and bool(self.store) and self.store != "off"


def capture_prefix(model: str, version: str | None = None) -> str:
    return f"captures/{model}/" + (f"{version}/" if version else "")
