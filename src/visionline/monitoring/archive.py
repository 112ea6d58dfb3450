"""Monitoring's files in a model archive: the capture settings and the run's embedding
projection, which the serving worker's capture reads (``visionline.monitoring.capture``).
The run's reference is built by packaging (``package_run``), not here: an archive can be
built from a run's weights alone (the serving benchmarks do)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from visionline.config import PipelineConfig
from visionline.monitoring.capture_settings import MONITOR_FILE, PROJECTION_FILE, CaptureSettings
from visionline.monitoring.reference import ensure_projection
from visionline.storage import ArtifactStore


def write_archive_files(
    store: ArtifactStore, run_id: str, cfg: PipelineConfig, dest: Path
) -> list[Path]:
    """The files the serving worker's capture reads from the archive: its settings and
    the run's embedding projection. Captures go to this store unless ``monitor.store``
    names another."""
    settings = CaptureSettings.from_config(cfg, store.uri)
    (dest / MONITOR_FILE).write_text(json.dumps(asdict(settings)))
    np.save(dest / PROJECTION_FILE, ensure_projection(store, run_id, cfg), allow_pickle=False)
    return [dest / MONITOR_FILE, dest / PROJECTION_FILE]
