"""Accuracy estimated without labels, and when it cannot be.

Average Thresholded Confidence (ATC, Garg et al., ICLR 2022): on the run's validation
split, find the score threshold ``t`` such that the share of validation scores above
``t`` equals the validation accuracy; a window's estimated accuracy is the share of its
scores above ``t``. The score is the negative entropy of the predicted distribution or
its maximum (``monitor.estimate.score``). Two baselines are computed beside it: the
average confidence (the mean maximum softmax) and the difference of confidences (DoC:
validation accuracy moved by the change in mean confidence).

The interval is a percentile bootstrap: the window and the validation split are both
resampled, the threshold refitted on each resample (its uncertainty counts too), and
the window's accuracy drawn as n right-or-wrong outcomes around each resample's
estimate: the interval is about the accuracy of these n images, not of a population.

Every such estimator assumes that the window's errors look like the validation
split's. When the window is far from anything the estimator was fitted on, the answer
is "cannot estimate", with the reason:

- a domain classifier (logistic regression, cross-validated, on the embedding,
  confidence and entropy) tells the window from the reference with an AUC above
  ``max_domain_auc``;
- ATC and the average confidence disagree by more than ``max_disagreement``: two
  estimators fitted on the same split that disagree cannot both be right, and on the
  benchmark the large disagreements are the windows where ATC fails.

The thresholds come from benchmarks/estimate.py (see docs/monitoring.md).

The fit is stored beside the reference (``runs/<run>/monitoring/estimator.json``); the
calibration data is the reference itself (its confidence, entropy and true label).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from visionline.config import EstimateConfig
from visionline.model.runs import RunPaths
from visionline.storage import ArtifactStore

log = logging.getLogger(__name__)

SCORE_NAMES = ("negative_entropy", "max_softmax")
ESTIMATOR_VERSION = 1


def scores(frame: pd.DataFrame, score: str) -> np.ndarray:
    """The confidence score of each row: higher means more likely right."""
    if score == "max_softmax":
        return frame["confidence"].to_numpy(dtype=np.float64)
    if score == "negative_entropy":
        return -frame["entropy"].to_numpy(dtype=np.float64)
    raise ValueError(f"unknown score {score!r}; one of {', '.join(SCORE_NAMES)}")


def atc_threshold(s: np.ndarray, correct: np.ndarray) -> tuple[float, float]:
    """(t, tie_share): the share of ``s`` above ``t``, plus ``tie_share`` of those equal
    to it, is the accuracy ``correct.mean()``. Confidences tie at 1.0 in float32, so the
    tie share matters: without it a threshold on a tie jumps by the whole tie."""
    s = np.asarray(s, dtype=np.float64)
    order = np.sort(s)[::-1]
    k = int(np.sum(correct))  # how many must count as above
    if k <= 0:
        return float(order[0]) + 1.0, 0.0
    if k >= len(s):
        return float(order[-1]) - 1.0, 0.0
    t = float(order[k - 1])
    above = int(np.sum(s > t))
    ties = int(np.sum(s == t))
    return t, (k - above) / ties


def atc_estimate(s: np.ndarray, t: float, tie_share: float) -> float:
    s = np.asarray(s, dtype=np.float64)
    if not len(s):
        return float("nan")
    return float(np.mean(s > t) + tie_share * np.mean(s == t))


@dataclass
class Estimator:
    """ATC's thresholds for each score, and what the baselines need, fitted on one
    validation split."""

    val_accuracy: float
    val_mean_confidence: float
    n: int
    thresholds: dict[str, dict[str, float]]  # score -> {"t", "tie_share"}
    version: int = ESTIMATOR_VERSION
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Estimator:
        return cls(**d)

    def estimates(self, window: pd.DataFrame) -> dict[str, float]:
        """Every estimator's point estimate on ``window``."""
        conf = window["confidence"].to_numpy(dtype=np.float64)
        out = {
            f"atc_{name}": atc_estimate(scores(window, name), th["t"], th["tie_share"])
            for name, th in self.thresholds.items()
        }
        out["average_confidence"] = float(np.mean(conf))
        out["doc"] = float(self.val_accuracy + np.mean(conf) - self.val_mean_confidence)
        return out


def fit_estimator(reference: pd.DataFrame) -> Estimator:
    """Fit on a described validation split with its true labels (the reference)."""
    if "true_label" not in reference or not len(reference):
        raise ValueError("the estimator is fitted on a reference with true labels")
    correct = (reference["label"] == reference["true_label"]).to_numpy()
    thresholds = {}
    for name in SCORE_NAMES:
        t, tie = atc_threshold(scores(reference, name), correct)
        thresholds[name] = {"t": t, "tie_share": tie}
    return Estimator(
        val_accuracy=float(correct.mean()),
        val_mean_confidence=float(reference["confidence"].mean()),
        n=len(reference),
        thresholds=thresholds,
        created=datetime.now(UTC).isoformat(),
    )


def method_key(cfg: EstimateConfig) -> str:
    return f"atc_{cfg.score}" if cfg.method == "atc" else cfg.method


def _point(
    cfg: EstimateConfig,
    r_s: np.ndarray,
    r_ok: np.ndarray,
    r_conf: np.ndarray,
    w_s: np.ndarray,
    w_conf: np.ndarray,
) -> float:
    if cfg.method == "average_confidence":
        return float(np.mean(w_conf))
    if cfg.method == "doc":
        return float(np.mean(r_ok) + np.mean(w_conf) - np.mean(r_conf))
    return atc_estimate(w_s, *atc_threshold(r_s, r_ok))


def bootstrap_interval(
    reference: pd.DataFrame, window: pd.DataFrame, cfg: EstimateConfig, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of the chosen estimate, the window and the validation split
    both resampled and the estimator refitted on each resample."""
    rng = np.random.default_rng(seed)
    r_s, w_s = scores(reference, cfg.score), scores(window, cfg.score)
    r_ok = (reference["label"] == reference["true_label"]).to_numpy()
    r_conf = reference["confidence"].to_numpy(float)
    w_conf = window["confidence"].to_numpy(float)
    values = []
    for _ in range(cfg.bootstrap):
        i = rng.integers(0, len(reference), len(reference))
        j = rng.integers(0, len(window), len(window))
        e = _point(cfg, r_s[i], r_ok[i], r_conf[i], w_s[j], w_conf[j])
        # the window's own accuracy is a draw too: n right-or-wrong outcomes around e
        values.append(rng.binomial(len(window), min(max(e, 0.0), 1.0)) / len(window))
    lo, hi = np.quantile(values, [(1 - cfg.interval) / 2, (1 + cfg.interval) / 2])
    return float(lo), float(hi)


def _domain_matrix(frame: pd.DataFrame, embedding: bool) -> np.ndarray:
    cols = [frame["confidence"].to_numpy(float), frame["entropy"].to_numpy(float)]
    parts = [np.stack(cols, 1)]
    if embedding:
        parts.append(np.stack(frame["embedding"].to_numpy()).astype(np.float64))
    return np.concatenate(parts, 1)


def _has_embedding(frame: pd.DataFrame) -> bool:
    return "embedding" in frame and bool(frame["embedding"].notna().all())


def domain_auc(
    reference: pd.DataFrame, window: pd.DataFrame, folds: int = 5, seed: int = 0
) -> float:
    """Cross-validated ROC AUC of a logistic regression telling window rows from
    reference rows (0.5: indistinguishable, 1.0: separated)."""
    emb = _has_embedding(reference) and _has_embedding(window)
    x = np.concatenate([_domain_matrix(reference, emb), _domain_matrix(window, emb)])
    y = np.concatenate([np.zeros(len(reference)), np.ones(len(window))])
    folds = max(2, min(folds, len(window), len(reference)))
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, class_weight="balanced"))
    p = cross_val_predict(
        clf,
        x,
        y,
        cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
        method="predict_proba",
    )[:, 1]
    return float(roc_auc_score(y, p))


@dataclass
class AccuracyEstimate:
    """What a report says about accuracy: an estimate with its interval, or why not."""

    method: str  # e.g. atc_negative_entropy
    reference_accuracy: float  # the validation split's, where the estimator was fitted
    n_window: int
    estimate: float | None = None
    low: float | None = None
    high: float | None = None
    interval: float = 0.95
    declined: str | None = None  # the reason, when it cannot estimate
    estimates: dict[str, float] = field(default_factory=dict)  # every estimator's figure
    checks: dict[str, float] = field(default_factory=dict)  # the validity statistics

    @property
    def answered(self) -> bool:
        return self.declined is None and self.estimate is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        ref = f"reference accuracy {self.reference_accuracy:.4f}"
        if not self.answered:
            return f"accuracy cannot be estimated for this window: {self.declined} ({ref})"
        return (
            f"{self.estimate:.4f} [{self.low:.4f}, {self.high:.4f}] "
            f"({self.interval:.0%} bootstrap, {self.method}; {ref})"
        )


def validity_reasons(checks: dict[str, float], cfg: EstimateConfig) -> list[str]:
    """The rules a window breaks, in words; empty when the estimate stands."""
    why = []
    auc = checks.get("domain_auc")
    if auc is not None and cfg.max_domain_auc < 1.0 and auc > cfg.max_domain_auc:
        why.append(
            f"a domain classifier tells the window from the reference (AUC {auc:.3f} > "
            f"monitor.estimate.max_domain_auc {cfg.max_domain_auc:g}): it is outside what "
            "the estimator was fitted on"
        )
    gap = checks.get("disagreement")
    if gap is not None and cfg.max_disagreement < 1.0 and gap > cfg.max_disagreement:
        why.append(
            f"ATC and the average confidence disagree by {gap:.3f} "
            f"(> monitor.estimate.max_disagreement {cfg.max_disagreement:g})"
        )
    return why


def estimate_accuracy(
    estimator: Estimator, reference: pd.DataFrame, window: pd.DataFrame, cfg: EstimateConfig
) -> AccuracyEstimate:
    """The window's estimated accuracy with its interval, or "cannot estimate" and why."""
    out = AccuracyEstimate(
        method_key(cfg), estimator.val_accuracy, len(window), interval=cfg.interval
    )
    if len(window) < cfg.min_window:
        out.declined = (
            f"{len(window)} records, fewer than monitor.estimate.min_window ({cfg.min_window})"
        )
        return out
    out.estimates = estimator.estimates(window)
    atc = out.estimates[f"atc_{cfg.score}"]
    out.checks = {
        "domain_auc": domain_auc(reference, window),
        "disagreement": abs(atc - out.estimates["average_confidence"]),
    }
    reasons = validity_reasons(out.checks, cfg)
    if reasons:
        out.declined = "; ".join(reasons)
        return out
    out.estimate = out.estimates[out.method]
    out.low, out.high = bootstrap_interval(reference, window, cfg)
    return out


# --------------------------------------------------------------------------- storage
def estimator_key(run_id: str) -> str:
    return f"{RunPaths(run_id).monitoring}/estimator.json"


def store_estimator(store: ArtifactStore, run_id: str, estimator: Estimator) -> None:
    store.put_json(estimator_key(run_id), estimator.to_dict())


def ensure_estimator(store: ArtifactStore, run_id: str, reference: pd.DataFrame) -> Estimator:
    """The run's stored fit; a reference built before estimators existed gets one now,
    from its own rows (they carry the true labels)."""
    key = estimator_key(run_id)
    if store.exists(key):
        return Estimator.from_dict(store.get_json(key))
    est = fit_estimator(reference)
    store_estimator(store, run_id, est)
    log.info("accuracy estimator of %s fitted on %d reference images", run_id, est.n)
    return est
