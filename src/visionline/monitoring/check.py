"""One drift check: a served model's window of captures (or a folder of images run
through the same path) against the model's reference, reported and stored."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from visionline.config import PipelineConfig
from visionline.data.images import IMAGE_EXTENSIONS
from visionline.errors import MonitoringError
from visionline.model.predictor import Predictor
from visionline.model.runs import load_run_config
from visionline.monitoring.capture_windows import read_captures
from visionline.monitoring.drift import compare
from visionline.monitoring.estimate import ensure_estimator, estimate_accuracy
from visionline.monitoring.features import describe_images
from visionline.monitoring.reference import ensure_projection, ensure_reference, load_reference
from visionline.monitoring.report import DriftReport, report_images, store_report
from visionline.registry import ModelRef, Registry, resolve_model_ref
from visionline.storage import ArtifactStore


@dataclass
class CheckOutcome:
    report: DriftReport
    images: dict[str, bytes]  # PNG by file name
    report_key: str | None  # the stored markdown
    window: pd.DataFrame
    skipped: list[tuple[str, str]]  # images that could not be read (--images)


def resolve_model(store: ArtifactStore, spec: str) -> tuple[ModelRef, dict[str, Any]]:
    """``NAME`` (its champion), ``NAME:VERSION`` or ``NAME:ALIAS`` -> the model and its
    registry entry."""
    ref = resolve_model_ref(store, spec)
    return ref, Registry(store, ref.name).info(ref.version)


def _finish(
    store: ArtifactStore,
    cfg: PipelineConfig,
    ref: ModelRef,
    run_id: str,
    source: str,
    window: pd.DataFrame,
    save: bool,
    skipped: list[tuple[str, str]] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> CheckOutcome:
    reference, meta = load_reference(store, run_id)
    result = compare(reference, window, meta["classes"], meta["channels"], cfg.monitor)
    accuracy = estimate_accuracy(
        ensure_estimator(store, run_id, reference), reference, window, cfg.monitor.estimate
    )
    report = DriftReport(
        ref.name,
        ref.version,
        run_id,
        source,
        f"{meta['split']} split of {meta['dataset']}",
        result,
        start=start.isoformat() if start else None,
        end=end.isoformat() if end else None,
        accuracy=accuracy,
    )
    images = report_images(report, reference, window) if len(window) else {}
    key = store_report(store, report, images) if save else None
    return CheckOutcome(report, images, key, window, skipped or [])


def check_window(
    store: ArtifactStore,
    cfg: PipelineConfig,
    spec: str,
    start: datetime,
    end: datetime,
    save: bool = True,
) -> CheckOutcome:
    """The captures of the model's version with start <= time < end, against its
    reference. A window with too few records gets no verdict (``drifted`` None)."""
    ref, info = resolve_model(store, spec)
    ensure_reference(store, info["run_id"])
    window = read_captures(store, ref.name, ref.version, start, end)
    source = (
        f"captures {start.isoformat(timespec='seconds')} .. {end.isoformat(timespec='seconds')}"
    )
    return _finish(store, cfg, ref, info["run_id"], source, window, save, start=start, end=end)


def image_files(folder: str | Path) -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise MonitoringError(f"image folder not found: {folder}")
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise MonitoringError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {folder}")
    return files


def check_images(
    store: ArtifactStore, cfg: PipelineConfig, spec: str, folder: str | Path, save: bool = True
) -> CheckOutcome:
    """A folder of images through the model in-process, described as captures are
    (same decoding, transform, forward pass and projection), against its reference."""
    ref, info = resolve_model(store, spec)
    run_id = info["run_id"]
    ensure_reference(store, run_id)
    files = image_files(folder)
    described = describe_images(
        Predictor.from_run(store, run_id),
        ensure_projection(store, run_id, load_run_config(store, run_id)),
        ((str(p), p.read_bytes()) for p in files),
        max_pixels=cfg.serve.max_image_pixels,
    )
    return _finish(
        store, cfg, ref, run_id, f"images {folder}", described.frame, save, described.skipped
    )
