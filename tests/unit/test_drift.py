"""The drift statistics on samples whose answer is known."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from visionline.config import MonitorConfig
from visionline.monitoring.drift import (
    benjamini_hochberg,
    chi2_classes,
    class_psi,
    compare,
    mmd_test,
    psi,
)


def test_psi_is_near_zero_for_one_distribution_and_large_for_a_shift():
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, 5000)
    assert psi(ref, rng.normal(0, 1, 5000)) < 0.02
    assert 0.1 < psi(ref, rng.normal(0.5, 1, 5000)) < psi(ref, rng.normal(1.0, 1, 5000))
    assert psi(ref, rng.normal(1.0, 1, 5000)) > 0.5


def test_psi_matches_the_textbook_formula_on_decile_bins():
    rng = np.random.default_rng(1)
    ref, cur = rng.uniform(0, 1, 10_000), rng.uniform(0, 1, 10_000) ** 1.5
    edges = np.quantile(ref, np.linspace(0, 1, 11))[1:-1]
    r = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=10) / len(ref)
    c = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=10) / len(cur)
    assert psi(ref, cur) == pytest.approx(np.sum((c - r) * np.log(c / r)), rel=1e-3)


def test_psi_sees_a_new_value_of_a_feature_with_few_values():
    ref = np.full(500, 8.0)  # every reference image is 8 px wide
    assert psi(ref, np.full(200, 8.0)) < 0.02
    assert psi(ref, np.full(200, 32.0)) > 1.0  # larger than all: still a shift
    assert psi(ref, np.full(200, 4.0)) > 1.0


def test_class_psi_and_chi_squared():
    ref = np.array([100, 100, 100, 100])
    same = np.array([50, 49, 51, 50])
    skewed = np.array([120, 30, 30, 20])
    assert class_psi(ref, same) < 0.01 and class_psi(ref, skewed) > 0.3
    assert chi2_classes(ref, same)[1] > 0.5
    assert chi2_classes(ref, skewed)[1] < 1e-6
    assert chi2_classes(np.array([5, 0]), np.array([7, 0])) == (0.0, 1.0)  # one class only


def test_mmd_permutation_test_separates_shifted_embeddings():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (300, 16))
    mmd_same, p_same = mmd_test(x, rng.normal(0, 1, (200, 16)), permutations=200, seed=0)
    mmd_shift, p_shift = mmd_test(x, rng.normal(0.4, 1, (200, 16)), permutations=200, seed=0)
    assert p_same > 0.05 and abs(mmd_same) < 0.01  # unbiased: about 0 under the null
    assert p_shift == pytest.approx(1 / 201) and mmd_shift > 0.05
    # seeded: the same inputs give the same answer
    assert mmd_test(x, x[:50] + 0.1, seed=3) == mmd_test(x, x[:50] + 0.1, seed=3)


def test_mmd_null_p_values_are_roughly_uniform():
    """Under the null the permutation p-value is uniform: about 10% fall under 0.1."""
    rng = np.random.default_rng(4)
    ps = [
        mmd_test(rng.normal(0, 1, (60, 4)), rng.normal(0, 1, (60, 4)), permutations=99, seed=i)[1]
        for i in range(60)
    ]
    assert 0.0 < np.mean(np.array(ps) < 0.1) < 0.25
    assert 0.35 < np.median(ps) < 0.65


def test_benjamini_hochberg_by_hand():
    p = [0.01, 0.04, 0.03, 0.5]
    # sorted: 0.01*4/1=0.04, 0.03*4/2=0.06, 0.04*4/3=0.0533 -> monotone 0.0533, 0.5*4/4=0.5
    assert benjamini_hochberg(p) == pytest.approx([0.04, 0.05333, 0.05333, 0.5], rel=1e-3)
    assert benjamini_hochberg([]) == []


def _frame(rng, n, brightness=0.0, classes=("a", "b", "c"), weights=None):
    mean = np.clip(rng.normal(0.3 + brightness, 0.05, n), 0, 1)
    return pd.DataFrame(
        {
            "width": np.full(n, 8),
            "height": np.full(n, 8),
            "mean_0": mean,
            "std_0": rng.normal(0.3, 0.03, n),
            "confidence": rng.beta(8, 1, n),
            "entropy": rng.gamma(1, 0.2, n),
            "label": rng.choice(list(classes), n, p=weights),
            "embedding": list(rng.normal(brightness * 3, 1, (n, 8)).astype(np.float32)),
        }
    )


def test_compare_flags_a_shift_and_not_the_same_distribution():
    rng = np.random.default_rng(5)
    cfg = MonitorConfig(min_window=20, permutations=99)
    ref = _frame(rng, 400)
    same = compare(ref, _frame(rng, 200), ["a", "b", "c"], 1, cfg)
    assert same.drifted is False and not same.drifted_tests
    shifted = compare(ref, _frame(rng, 200, brightness=0.1), ["a", "b", "c"], 1, cfg)
    assert shifted.drifted is True
    assert {t.feature for t in shifted.drifted_tests} >= {"mean_0", "embedding"}
    assert "confidence" not in {t.feature for t in shifted.drifted_tests}
    classes = compare(ref, _frame(rng, 200, weights=[0.8, 0.1, 0.1]), ["a", "b", "c"], 1, cfg)
    assert [t.feature for t in classes.drifted_tests] == ["predicted_class"]


def test_a_significant_but_tiny_shift_is_not_drift():
    """With a huge window the test is significant for a trivial shift; the effect size
    threshold keeps it from being reported."""
    rng = np.random.default_rng(6)
    cfg = MonitorConfig(min_window=20, permutations=19, max_mmd_samples=50)
    ref, cur = _frame(rng, 20_000), _frame(rng, 20_000, brightness=0.004)
    res = compare(ref, cur, ["a", "b", "c"], 1, cfg)
    mean = next(t for t in res.tests if t.feature == "mean_0")
    assert mean.p_adjusted < 1e-6 and mean.effect < cfg.psi_threshold and not mean.drifted
    assert stats.ks_2samp(ref["mean_0"], cur["mean_0"]).pvalue < 1e-6


def test_too_small_a_window_gets_no_verdict():
    rng = np.random.default_rng(7)
    res = compare(_frame(rng, 100), _frame(rng, 10), ["a", "b", "c"], 1, MonitorConfig())
    assert res.drifted is None and not res.tests and "min_window" in res.note
