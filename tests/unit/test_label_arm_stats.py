"""The arithmetic of the control arm: the random draw and the paired bootstrap."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from visionline.errors import MonitoringError
from visionline.monitoring.label_report import compare_arms
from visionline.monitoring.labels import control_sample


def test_the_control_arm_is_drawn_from_what_the_strategy_left():
    picked = control_sample(100, list(range(10)), 0.2, 10, seed=1)
    assert len(picked) == 2 and not set(picked) & set(range(10))
    assert picked == control_sample(100, list(range(10)), 0.2, 10, seed=1)  # seeded
    assert control_sample(100, [], 0.0, 10, 0) == []
    assert len(control_sample(100, [0], 0.01, 10, 0)) == 1  # at least one
    assert sorted(control_sample(12, list(range(10)), 1.0, 10, 0)) == [10, 11]  # what is left
    with pytest.raises(MonitoringError, match="no captures left"):
        control_sample(10, list(range(10)), 0.2, 10, 0)


def _series(correct: list[int]) -> pd.Series:
    return pd.Series(correct, index=[f"img{i}" for i in range(len(correct))], dtype=float)


def test_gains_per_label_and_the_paired_interval():
    rng = np.random.default_rng(0)
    base = rng.random(400) < 0.7
    chosen = base | (rng.random(400) < 0.5)  # fixes about half of the errors
    r = compare_arms(_series(base), _series(chosen), _series(base), n=10)
    assert r["base"]["accuracy"] == pytest.approx(base.mean())
    assert r["arms"]["chosen"]["gain_per_label"] == pytest.approx(
        (chosen.mean() - base.mean()) / 10
    )
    assert r["arms"]["control"]["gain_per_label"] == 0.0
    assert r["arms"]["control"]["gain_per_label_interval"] == [0.0, 0.0]  # paired: no noise
    lo, hi = r["difference"]["per_label_interval"]
    assert 0 < lo < r["difference"]["per_label"] < hi
    assert r["difference"]["verdict"] == "the chosen labels helped more than random ones"
    same = compare_arms(_series(base), _series(chosen), _series(chosen), n=10)
    assert same["difference"]["verdict"].startswith("no difference shown")
