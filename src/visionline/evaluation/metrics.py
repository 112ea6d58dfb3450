"""Predictions on a split and the metrics computed from them, with scikit-learn."""

from __future__ import annotations

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
from visionline.storage import ArtifactStore


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


def evaluate_on_test(
    store: ArtifactStore, predictor: Predictor, cfg: PipelineConfig, ref: DatasetRef
) -> Predictions:
    return predict(predictor, split_dataset(store, ref, predictor, cfg, "test"))


def one_vs_rest(y_true: np.ndarray, n_classes: int) -> np.ndarray:
    """(n, n_classes) indicator columns, one per class (also for two classes, where
    ``label_binarize`` returns a single column)."""
    y_bin = label_binarize(y_true, classes=list(range(n_classes)))
    return np.hstack([1 - y_bin, y_bin]) if n_classes == 2 else y_bin


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
    y_bin = one_vs_rest(y_true, len(classes))
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
