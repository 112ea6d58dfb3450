"""The rollout statistics against references (scipy's exact binomial test, published
Wilson intervals) and the decision they lead to."""

from __future__ import annotations

import pytest
from scipy.stats import binomtest

from visionline.serving.rollout.verdict import (
    Margins,
    SideStats,
    decide,
    disagreement,
    health_checks,
    labelled_comparison,
    mcnemar_exact,
    paired_difference,
    quantile,
    side_stats,
    wilson,
)


@pytest.mark.parametrize(
    ("k", "n", "lo", "hi"),
    # Newcombe (1998), table I: Wilson score intervals at 95%
    [
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_matches_published_intervals(k, n, lo, hi):
    got = wilson(k, n)
    assert got == pytest.approx((lo, hi), abs=6e-4)


@pytest.mark.parametrize(("b", "c"), [(0, 5), (3, 12), (10, 10), (1, 0), (25, 40)])
def test_mcnemar_is_the_exact_binomial_test_on_discordant_pairs(b, c):
    assert mcnemar_exact(b, c) == pytest.approx(binomtest(min(b, c), b + c, 0.5).pvalue)
    assert mcnemar_exact(0, 0) == 1.0


def test_paired_difference_and_its_lower_bound():
    assert paired_difference(0, 0, 100) == (0.0, 0.0)
    d, lower = paired_difference(30, 0, 100)  # the challenger lost 30 the champion won
    assert d == pytest.approx(-0.30) and lower < -0.30
    d, lower = paired_difference(5, 5, 100)
    assert d == 0 and -0.06 < lower < 0


def test_quantiles_and_side_stats_count_only_5xx_and_no_answer_as_errors():
    assert quantile([], 0.99) is None and quantile([3, 1, 2], 0.5) == 2
    assert quantile(list(range(1, 101)), 0.99) == 99
    s = side_stats([(200, 0.01)] * 95 + [(400, 0.01)] * 2 + [(503, 0.5)] * 2 + [(0, 1.0)])
    assert (s.requests, s.errors) == (100, 3) and s.error_rate == 0.03
    assert s.p50_ms == pytest.approx(10.0)


def test_disagreement_per_class():
    pairs = [("1", "1")] * 90 + [("1", "2")] * 10 + [("3", "3")] * 50
    d = disagreement(pairs)
    assert (d["n"], d["disagree"]) == (150, 10)
    assert d["interval"][0] < 10 / 150 < d["interval"][1]
    assert d["per_class"]["1"]["rate"] == 0.1 and d["per_class"]["3"]["disagree"] == 0


M = Margins(min_requests=100, min_labelled=50)
GOOD = SideStats(200, 0, 10.0, 40.0)


def test_a_challenger_with_5_percent_errors_fails_the_health_check():
    checks = {c.name: c for c in health_checks(GOOD, SideStats(200, 10, 10.0, 40.0), M)}
    assert not checks["errors"].passed and "5.00%" in checks["errors"].detail
    assert checks["latency"].passed
    slow = {c.name: c for c in health_checks(GOOD, SideStats(200, 0, 10.0, 3000.0), M)}
    assert not slow["latency"].passed and slow["errors"].passed


def test_too_few_requests_say_how_many_more():
    few = health_checks(GOOD, SideStats(40, 10, 10.0, 40.0), M)
    assert all(not c.passed and c.needs == 60 for c in few)
    verdict = decide(GOOD, GOOD, disagreement([("1", "1")] * 30), labelled_comparison([]), M)
    needs = {c.name: c.needs for c in verdict.blocking}
    assert needs == {"requests": 70, "accuracy": 50}
    assert "needs 70 more" in verdict.blocking[0].detail


def test_a_worse_challenger_cannot_be_promoted_and_an_equal_one_can():
    agree = disagreement([("1", "1")] * 200)
    worse = labelled_comparison([("1", "1", "2")] * 20 + [("1", "1", "1")] * 80)
    v = decide(GOOD, GOOD, agree, worse, M)
    assert not v.promotable and [c.name for c in v.blocking] == ["accuracy"]
    assert worse["mcnemar_p"] < 1e-5 and "McNemar p" in v.blocking[0].detail
    same = labelled_comparison([("1", "1", "1")] * 90 + [("1", "2", "2")] * 10)
    assert decide(GOOD, GOOD, agree, same, M).promotable
