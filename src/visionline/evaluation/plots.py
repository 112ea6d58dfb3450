"""The evaluation's pictures as PNG bytes: confusion matrix, one-vs-rest ROC and
precision-recall curves, training curves.

Figures are built with matplotlib's object API (``Figure``), not pyplot: no backend to
choose, no global figure registry to close, safe from any thread.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure
from sklearn import metrics as skm

from visionline.evaluation.metrics import one_vs_rest


def png(fig: Figure, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def plot_confusion_matrix(cm: list[list[int]], classes: list[str]) -> bytes:
    size = max(4.0, 0.5 * len(classes) + 2)
    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    skm.ConfusionMatrixDisplay(np.asarray(cm), display_labels=classes).plot(
        ax=ax, cmap="Blues", colorbar=False, values_format="d"
    )
    ax.set_title("Confusion matrix (test split)")
    return png(fig)


def plot_curves(y_true: np.ndarray, probs: np.ndarray, classes: list[str], kind: str) -> bytes:
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    y_bin = one_vs_rest(y_true, len(classes))
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
    return png(fig)


def plot_training_curves(history: list[dict]) -> bytes:
    fig = Figure(figsize=(10, 4))
    a, b = fig.subplots(1, 2)
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
    return png(fig)
