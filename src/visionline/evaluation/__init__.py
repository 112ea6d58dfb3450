"""Evaluation on the test split with scikit-learn's metrics, plus pictures and a report.

Writes ``runs/<run_id>/evaluation/{metrics.json, predictions.parquet,
confusion_matrix.png, roc.png, pr.png, training_curves.png, report.md}``.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize
from torch.utils.data import DataLoader

from visionline.config import PipelineConfig
from visionline.data.datasets import LocalCache, ManifestDataset
from visionline.data.images import image_limits
from visionline.data.manifest import DatasetRef, read_manifest
from visionline.model.predictor import Predictor
from visionline.model.runs import RunPaths, load_run_config, load_run_info
from visionline.storage import ArtifactStore

log = logging.getLogger(__name__)


@dataclass
class Predictions:
    sources: list[str]
    y_true: np.ndarray  # (n,)
    probs: np.ndarray  # (n, classes)

    @property
    def y_pred(self) -> np.ndarray:
        return self.probs.argmax(1)

    def to_frame(self) -> pd.DataFrame:
        df = pd.DataFrame({"source": self.sources, "y_true": self.y_true, "y_pred": self.y_pred})
        df["correct"] = df["y_true"] == df["y_pred"]
        for i in range(self.probs.shape[1]):
            df[f"p{i}"] = self.probs[:, i]
        return df


def predict(predictor: Predictor, ds: ManifestDataset, batch_size: int = 256) -> Predictions:
    """Probabilities for every image of ``ds`` (built with ``predictor.transform``)."""
    probs = [predictor.predict_tensor(x) for x, _ in DataLoader(ds, batch_size=batch_size)]
    p = torch.cat(probs).numpy() if probs else np.zeros((0, len(predictor.classes)))
    return Predictions(list(ds.sources), np.asarray(ds.targets), p)


def split_dataset(
    store: ArtifactStore,
    ref: DatasetRef,
    predictor: Predictor,
    cfg: PipelineConfig,
    split: str = "test",
) -> ManifestDataset:
    """One split of ``ref``, preprocessed exactly as ``predictor`` preprocesses."""
    return ManifestDataset(
        read_manifest(store, ref),
        split,
        predictor.classes,
        LocalCache(store, cfg.data.cache_dir),
        predictor.transform,
        image_limits=image_limits(cfg.data, predictor.preprocessing.resize_to),
    )


def compute_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, per-class and averaged P/R/F1, confusion matrix, one-vs-rest ROC/PR AUC."""
    labels = list(range(len(classes)))
    y_pred = probs.argmax(1)
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    out: dict[str, Any] = {
        "n": len(y_true),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y_true, y_pred)),
        "per_class": {
            c: {
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(s[i]),
            }
            for i, c in enumerate(classes)
        },
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "classes": classes,
    }
    for avg in ("macro", "weighted"):
        ap, ar, af, _ = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=avg, zero_division=0
        )
        out[avg] = {"precision": float(ap), "recall": float(ar), "f1": float(af)}
    present = np.unique(y_true)
    y_bin = label_binarize(y_true, classes=labels)
    if len(classes) == 2:
        y_bin = np.hstack([1 - y_bin, y_bin])
    roc, pr = {}, {}
    for i, c in enumerate(classes):
        if i in present and len(present) > 1:
            roc[c] = float(skm.roc_auc_score(y_bin[:, i], probs[:, i]))
            pr[c] = float(skm.average_precision_score(y_bin[:, i], probs[:, i]))
    out["roc_auc"] = {
        "per_class": roc,
        "macro": float(np.mean(list(roc.values()))) if roc else None,
    }
    out["pr_auc"] = {"per_class": pr, "macro": float(np.mean(list(pr.values()))) if pr else None}
    return out


# --------------------------------------------------------------------------- pictures
def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def plot_confusion_matrix(cm: list[list[int]], classes: list[str]) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    size = max(4.0, 0.5 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    skm.ConfusionMatrixDisplay(np.asarray(cm), display_labels=classes).plot(
        ax=ax, cmap="Blues", colorbar=False, values_format="d"
    )
    ax.set_title("Confusion matrix (test split)")
    return _png(fig)


def plot_curves(y_true: np.ndarray, probs: np.ndarray, classes: list[str], kind: str) -> bytes:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    y_bin = label_binarize(y_true, classes=list(range(len(classes))))
    if len(classes) == 2:
        y_bin = np.hstack([1 - y_bin, y_bin])
    for i, c in enumerate(classes):
        if y_bin[:, i].sum() == 0 or y_bin[:, i].sum() == len(y_bin):
            continue
        if kind == "roc":
            skm.RocCurveDisplay.from_predictions(
                y_bin[:, i], probs[:, i], name=str(c), ax=ax, plot_chance_level=False
            )
        else:
            skm.PrecisionRecallDisplay.from_predictions(
                y_bin[:, i], probs[:, i], name=str(c), ax=ax
            )
    ax.set_title(("ROC" if kind == "roc" else "Precision-recall") + " curves, one vs rest")
    ax.legend(fontsize=7, loc="lower right" if kind == "roc" else "lower left")
    return _png(fig)


def plot_training_curves(history: list[dict]) -> bytes:
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    ep = [h["epoch"] for h in history]
    a.plot(ep, [h["train_loss"] for h in history], label="train")
    a.plot(ep, [h["val_loss"] for h in history], label="val")
    a.set(title="loss", xlabel="epoch")
    b.plot(ep, [h["train_accuracy"] for h in history], label="train")
    b.plot(ep, [h["val_accuracy"] for h in history], label="val")
    b.set(title="accuracy", xlabel="epoch")
    for ax in (a, b):
        ax.legend()
        ax.grid(alpha=0.3)
    return _png(fig)


def metrics_markdown(m: dict) -> str:
    """The headline metrics as a markdown table (report, model card, Prefect artifact)."""

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    return "\n".join(
        [
            "| metric | value |",
            "| --- | --- |",
            f"| accuracy | {fmt(m['accuracy'])} |",
            f"| balanced accuracy | {fmt(m['balanced_accuracy'])} |",
            f"| macro precision / recall / F1 | {fmt(m['macro']['precision'])} / {fmt(m['macro']['recall'])} / {fmt(m['macro']['f1'])} |",
            f"| weighted F1 | {fmt(m['weighted']['f1'])} |",
            f"| macro ROC AUC (one vs rest) | {fmt(m['roc_auc']['macro'])} |",
            f"| macro PR AUC | {fmt(m['pr_auc']['macro'])} |",
            f"| test images | {m['n']} |",
            "",
        ]
    )


def render_report(run_id: str, info: dict, m: dict) -> str:
    lines = [
        f"# Evaluation of run `{run_id}`",
        "",
        f"- dataset: `{info['dataset']}`, architecture `{info['arch']}`, code `{info['code_version']}`",
        f"- test images: {m['n']}",
        "",
        metrics_markdown(m),
        "| class | precision | recall | F1 | support |",
        "| --- | --- | --- | --- | --- |",
    ]
    for c, v in m["per_class"].items():
        lines.append(
            f"| {c} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} | {v['support']} |"
        )
    lines += [
        "",
        "![confusion matrix](confusion_matrix.png)",
        "![ROC curves](roc.png)",
        "![PR curves](pr.png)",
        "![training curves](training_curves.png)",
        "",
    ]
    return "\n".join(lines)


def evaluate_on_test(
    store: ArtifactStore, predictor: Predictor, cfg: PipelineConfig, ref: DatasetRef
) -> Predictions:
    return predict(predictor, split_dataset(store, ref, predictor, cfg, "test"))


def evaluate_run(store: ArtifactStore, run_id: str) -> dict[str, Any]:
    """Evaluate a finished run on its dataset's test split and store the results."""
    paths = RunPaths(run_id)
    cfg = load_run_config(store, run_id)
    info = load_run_info(store, run_id)
    predictor = Predictor.from_run(store, run_id)
    preds = evaluate_on_test(
        store, predictor, cfg, DatasetRef(info["dataset_name"], info["dataset_version"])
    )
    m = compute_metrics(preds.y_true, preds.probs, info["classes"])
    m.update(run_id=run_id, dataset=info["dataset"], code_version=info["code_version"])
    out = paths.evaluation
    buf = io.BytesIO()
    preds.to_frame().to_parquet(buf, index=False)
    store.put_bytes(paths.predictions, buf.getvalue())
    store.put_bytes(
        f"{out}/confusion_matrix.png", plot_confusion_matrix(m["confusion_matrix"], info["classes"])
    )
    store.put_bytes(
        f"{out}/roc.png", plot_curves(preds.y_true, preds.probs, info["classes"], "roc")
    )
    store.put_bytes(f"{out}/pr.png", plot_curves(preds.y_true, preds.probs, info["classes"], "pr"))
    store.put_bytes(f"{out}/training_curves.png", plot_training_curves(info["history"]))
    store.put_bytes(f"{out}/report.md", render_report(run_id, info, m).encode())
    from visionline.monitoring.reference import build_reference

    build_reference(store, run_id, predictor, info, cfg)  # what monitoring compares windows with
    store.put_json(
        paths.evaluation_metrics, m
    )  # last: its presence means the evaluation is complete
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
    return pd.read_parquet(io.BytesIO(store.get_bytes(RunPaths(run_id).predictions)))
