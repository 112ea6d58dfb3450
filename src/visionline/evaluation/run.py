"""Evaluate a finished run on its dataset's test split and store what it found:

    runs/<run_id>/evaluation/{metrics.json, predictions.parquet, confusion_matrix.png,
                              roc.png, pr.png, training_curves.png, report.md}

``metrics.json`` is written last: its presence means the evaluation is complete.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pandas as pd

from visionline.data.manifest import DatasetRef
from visionline.evaluation.metrics import Predictions, compute_metrics, evaluate_on_test
from visionline.evaluation.plots import plot_confusion_matrix, plot_curves, plot_training_curves
from visionline.evaluation.report import render_report
from visionline.model.predictor import Predictor
from visionline.model.runs import RunPaths, load_run_config, load_run_info
from visionline.storage import ArtifactStore

log = logging.getLogger(__name__)


def store_evaluation_files(
    store: ArtifactStore, run_id: str, info: dict[str, Any], preds: Predictions, m: dict
) -> None:
    """The predictions, the pictures and the report (not ``metrics.json``)."""
    paths = RunPaths(run_id)
    out, classes = paths.evaluation, info["classes"]
    buf = io.BytesIO()
    preds.to_frame().to_parquet(buf, index=False)
    store.put_bytes(paths.predictions, buf.getvalue())
    store.put_bytes(
        f"{out}/confusion_matrix.png", plot_confusion_matrix(m["confusion_matrix"], classes)
    )
    store.put_bytes(f"{out}/roc.png", plot_curves(preds.y_true, preds.probs, classes, "roc"))
    store.put_bytes(f"{out}/pr.png", plot_curves(preds.y_true, preds.probs, classes, "pr"))
    store.put_bytes(f"{out}/training_curves.png", plot_training_curves(info["history"]))
    store.put_bytes(f"{out}/report.md", render_report(run_id, info, m).encode())


def evaluate_run(store: ArtifactStore, run_id: str) -> dict[str, Any]:
    """Evaluate a finished run on its dataset's test split and store the results."""
    cfg = load_run_config(store, run_id)
    info = load_run_info(store, run_id)
    predictor = Predictor.from_run(store, run_id)
    preds = evaluate_on_test(
        store, predictor, cfg, DatasetRef(info["dataset_name"], info["dataset_version"])
    )
    m = compute_metrics(preds.y_true, preds.probs, info["classes"])
    m.update(run_id=run_id, dataset=info["dataset"], code_version=info["code_version"])
    store_evaluation_files(store, run_id, info, preds, m)
    # last: its presence means the evaluation is complete
    store.put_json(RunPaths(run_id).evaluation_metrics, m)
    log.info(
        "%s",
        json.dumps({"run_id": run_id, "accuracy": m["accuracy"], "macro_f1": m["macro"]["f1"]}),
    )
    return m


def ensure_evaluated(store: ArtifactStore, run_id: str) -> dict[str, Any]:
    """The stored evaluation of a run, computing it once."""
    key = RunPaths(run_id).evaluation_metrics
    return store.get_json(key) if store.exists(key) else evaluate_run(store, run_id)


def load_predictions(store: ArtifactStore, run_id: str) -> pd.DataFrame:
    """The per-image predictions ``evaluate_run`` stored (one row per test image)."""
    return pd.read_parquet(io.BytesIO(store.get_bytes(RunPaths(run_id).predictions)))
