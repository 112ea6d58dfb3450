"""Monitoring's files in a model archive: the capture settings and the run's embedding
projection, which the serving worker's capture reads (``visionline.monitoring.capture``).

Packaging a run is where monitoring first needs the run, so its reference is built here
too: a served model can be checked against it from the first window on.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from visionline.config import PipelineConfig
from visionline.monitoring.capture_settings import MONITOR_FILE, PROJECTION_FILE, CaptureSettings
from visionline.monitoring.reference import ensure_projection, ensure_reference
from visionline.storage import ArtifactStore


def write_archive_files(
    store: ArtifactStore, run_id: str, cfg: PipelineConfig, dest: Path
) -> list[Path]:
    """The files the serving worker's capture reads from the archive: its settings and
    the run's embedding projection. Captures go to this store unless ``monitor.store``
    names another. Builds the run's reference first, when it has none yet."""
    ensure_reference(store, run_id)
    settings = CaptureSettings.from_config(cfg, store.uri)
    (dest / MONITOR_FILE).write_text(json.dumps(asdict(settings)))
    np.save(dest / PROJECTION_FILE, ensure_projection(store, run_id, cfg), allow_pickle=False)
    return [dest / MONITOR_FILE, dest / PROJECTION_FILE]
