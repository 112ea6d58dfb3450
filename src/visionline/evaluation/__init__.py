"""Evaluation on the test split with scikit-learn's metrics, plus pictures and a report;
then the promotion gate.

- ``metrics``: predictions on a split, and the metrics computed from them.
- ``plots``: confusion matrix, ROC and PR curves, training curves (PNG bytes).
- ``report``: the evaluation and the gate decision in markdown.
- ``run``: evaluate a finished run and store the results (``evaluate_run``,
  ``ensure_evaluated``, ``load_predictions``).
- ``gate``: thresholds, then a paired comparison with the champion.

Writes ``runs/<run_id>/evaluation/{metrics.json, predictions.parquet,
confusion_matrix.png, roc.png, pr.png, training_curves.png, report.md}``.
"""

from visionline.evaluation.metrics import (
    Predictions,
    compute_metrics,
    evaluate_on_test,
    predict,
    split_dataset,
)
from visionline.evaluation.report import decision_markdown, metrics_markdown, render_report
from visionline.evaluation.run import ensure_evaluated, evaluate_run, load_predictions

__all__ = [
    "Predictions",
    "compute_metrics",
    "decision_markdown",
    "ensure_evaluated",
    "evaluate_on_test",
    "evaluate_run",
    "load_predictions",
    "metrics_markdown",
    "predict",
    "render_report",
    "split_dataset",
]
