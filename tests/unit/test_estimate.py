"""Accuracy estimated without labels: ATC's threshold, its estimate on windows whose
truth is known by construction, the interval, and the refusals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from visionline.config import EstimateConfig
from visionline.monitoring.estimate import (
    atc_estimate,
    atc_threshold,
    ensure_estimator,
    estimate_accuracy,
    fit_estimator,
)
from visionline.storage import LocalStore

CLASSES = [f"c{i}" for i in range(5)]


def described(n: int, seed: int, sharpness: float = 3.0, shift: float = 0.0) -> pd.DataFrame:
    """Rows as monitoring describes them, from a calibrated synthetic classifier: each
    prediction is right with probability equal to its confidence, so the truth is known.
    ``sharpness`` sets how confident it is; ``shift`` moves the embedding."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (n, 5)) * sharpness
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    pred = p.argmax(1)
    conf = p.max(1)
    right = rng.random(n) < conf
    other = (pred + rng.integers(1, 5, n)) % 5
    truth = np.where(right, pred, other)
    emb = rng.normal(0, 1, (n, 8)).astype(np.float32) + shift
    return pd.DataFrame(
        {
            "label": [CLASSES[i] for i in pred],
            "true_label": [CLASSES[i] for i in truth],
            "confidence": conf,
            "entropy": -(p * np.log(p)).sum(1),
            "embedding": list(emb),
        }
    )


def accuracy(frame: pd.DataFrame) -> float:
    return float((frame["label"] == frame["true_label"]).mean())


def test_the_threshold_reproduces_the_validation_accuracy_even_on_ties():
    s = np.array([1.0] * 60 + [0.9] * 20 + [0.5] * 20)
    correct = np.array([True] * 70 + [False] * 30)
    t, tie = atc_threshold(s, correct)
    assert t == 1.0 or t == 0.9
    assert atc_estimate(s, t, tie) == pytest.approx(0.7)
    # every score tied at 1.0 (a float32 softmax does that): the tie share carries it
    t, tie = atc_threshold(np.ones(100), np.arange(100) < 80)
    assert atc_estimate(np.ones(50), t, tie) == pytest.approx(0.8)


def test_a_window_like_the_validation_split_is_estimated_at_its_accuracy():
    ref = described(3000, 0)
    window = described(1000, 1)
    est = estimate_accuracy(fit_estimator(ref), ref, window, EstimateConfig())
    assert est.answered, est.declined
    assert est.reference_accuracy == pytest.approx(accuracy(ref))
    assert abs(est.estimate - accuracy(window)) < 0.03
    assert est.low <= est.estimate <= est.high and est.high - est.low < 0.12
    assert est.low <= accuracy(window) <= est.high
    assert "cannot" not in est.line() and "reference accuracy" in est.line()


def test_a_harder_window_is_estimated_lower_within_the_goal():
    big = described(6000, 5)
    confident = big["confidence"] > big["confidence"].median()
    rng = np.random.default_rng(0)
    window = big[~(confident & (rng.random(len(big)) > 0.3))]  # most easy rows gone
    ref = described(3000, 0)
    truth = accuracy(window)
    assert truth < accuracy(ref) - 0.08
    est = estimate_accuracy(fit_estimator(ref), ref, window, EstimateConfig())
    assert est.answered, est.declined
    assert est.estimate < est.reference_accuracy - 0.08
    assert abs(est.estimate - truth) < 0.10


def test_a_window_the_reference_never_saw_is_declined_with_the_reason():
    ref = described(2000, 0)
    window = described(500, 3, shift=4.0)  # the embedding moved far from the reference
    est = estimate_accuracy(fit_estimator(ref), ref, window, EstimateConfig())
    assert not est.answered and est.estimate is None
    assert est.checks["domain_auc"] > 0.99
    assert "domain classifier" in est.declined and "max_domain_auc" in est.declined
    assert est.line().startswith("accuracy cannot be estimated for this window:")
    # the same window is answered when the rule is switched off
    off = EstimateConfig(max_domain_auc=1.0, max_disagreement=1.0)
    assert estimate_accuracy(fit_estimator(ref), ref, window, off).answered


def test_too_small_a_window_gets_no_estimate():
    ref = described(500, 0)
    est = estimate_accuracy(fit_estimator(ref), ref, described(10, 1), EstimateConfig())
    assert not est.answered and "min_window" in est.declined


def test_the_fit_is_stored_once_and_read_back(tmp_path):
    store = LocalStore(tmp_path)
    ref = described(400, 0)
    first = ensure_estimator(store, "r1", ref)
    again = ensure_estimator(store, "r1", described(400, 9))  # the stored fit wins
    assert again == first
    assert set(first.thresholds) == {"negative_entropy", "max_softmax"}


def test_the_score_and_method_are_validated():
    with pytest.raises(ValueError):
        EstimateConfig(score="margin")
    with pytest.raises(ValueError):
        EstimateConfig(max_domain_auc=0.3)
