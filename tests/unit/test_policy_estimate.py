"""The retraining policy's use of estimated accuracy: the upper bound under
min_accuracy for drift_windows consecutive windows retrains, a window that cannot be
estimated counts only when the drift tests flag it, and every decision names its
evidence."""

from datetime import UTC, datetime, timedelta

from visionline.config import PolicyConfig
from visionline.monitoring.policy import decide

T0 = datetime(2024, 5, 1, tzinfo=UTC)
POLICY = PolicyConfig(
    drift_windows=3, min_accuracy=0.9, min_labels=50, cooldown_hours=24, max_retrains_per_week=2
)


def est(value: float, half: float = 0.02) -> dict:
    return {"estimate": value, "low": value - half, "high": value + half, "declined": None}


DECLINED = {"estimate": None, "low": None, "high": None, "declined": "domain classifier AUC 1.0"}
LOW, OK = est(0.8), est(0.95)


def _run(windows, start=T0, policy=POLICY, history=None, version="1"):
    """One decision per hourly window ``(drifted, accuracy)``, each seeing the ones before."""
    history = list(history or [])
    out = []
    for i, (drifted, accuracy) in enumerate(windows):
        d = decide(
            policy,
            start + timedelta(hours=i),
            "m",
            version,
            drifted,
            None,
            history,
            accuracy=accuracy,
        )
        history.append(d.to_dict())
        out.append(d)
    return out, history


def test_retrain_when_the_upper_bound_stays_under_min_accuracy_without_drift():
    decisions, _ = _run([(False, LOW)] * 3)
    assert [d.retrain for d in decisions] == [False, False, True]
    assert [d.accuracy_streak for d in decisions] == [1, 2, 3]
    assert decisions[-1].reasons[0].startswith("estimated accuracy low in 3 consecutive windows")
    assert all(d.drift_streak == 0 for d in decisions)


def test_an_interval_reaching_min_accuracy_is_not_low_and_breaks_the_run():
    # 0.89 with an interval up to 0.91: the estimate alone is low, the evidence is not
    decisions, _ = _run([(False, LOW), (False, LOW), (False, est(0.89)), (False, LOW)])
    assert [d.accuracy_low for d in decisions] == [True, True, False, True]
    assert [d.accuracy_streak for d in decisions] == [1, 2, 0, 1]
    assert not any(d.retrain for d in decisions)
    assert "upper bound reaches 0.9" in decisions[2].evidence[1]


def test_a_declined_window_counts_only_when_the_drift_tests_flag_it():
    # declined without drift: logged, neither extends nor breaks the run
    decisions, _ = _run([(False, LOW), (False, DECLINED), (False, LOW), (False, LOW)])
    assert [d.accuracy_low for d in decisions] == [True, None, True, True]
    assert [d.accuracy_streak for d in decisions] == [1, 1, 2, 3]
    assert "cannot be estimated" in decisions[1].evidence[1]
    assert "not counted: the drift tests do not flag it" in decisions[1].evidence[1]
    # declined and drifted: counts as low accuracy
    decisions, _ = _run([(False, LOW), (True, DECLINED), (False, LOW)])
    assert [d.accuracy_streak for d in decisions] == [1, 2, 3]
    assert decisions[-1].retrain
    assert "counted as low accuracy because the drift tests flag it" in decisions[1].evidence[1]


def test_the_same_cooldown_and_weekly_cap_hold_an_accuracy_retrain():
    decisions, history = _run([(False, LOW)] * 5)
    assert [d.retrain for d in decisions] == [False, False, True, False, False]
    later, _ = _run([(False, LOW)] * 3, start=T0 + timedelta(hours=10), history=history)
    assert not later[-1].retrain
    assert any(r.startswith("cooldown: the last retrain was") for r in later[-1].reasons)
    policy = POLICY.model_copy(update={"cooldown_hours": 0, "drift_windows": 1})
    capped, _ = _run([(False, LOW)] * 3, policy=policy)
    assert [d.retrain for d in capped] == [True, True, False]
    assert "2 retrains in the last 7 days (policy: at most 2)" in capped[2].reasons


def test_every_decision_names_its_evidence():
    decisions, _ = _run([(True, OK), (None, None)])
    first, second = decisions
    assert first.evidence[0] == "drift tests: drift"
    assert first.evidence[1].startswith("estimated accuracy 0.9500 [0.9300, 0.9700]")
    assert first.evidence[2] == "labelled accuracy: no labels"
    assert second.evidence[:2] == ["drift tests: no verdict", "estimated accuracy: not computed"]
    assert "evidence used: drift tests: drift" in first.summary()
    assert first.to_dict()["evidence"] == first.evidence


def test_a_log_written_before_estimates_still_counts_drift():
    # older decisions have no accuracy fields: they neither extend nor break the accuracy run
    old = {"time": T0.isoformat(), "model": "m", "version": "1", "retrain": False, "drifted": True}
    decisions, _ = _run([(True, LOW), (True, LOW)], start=T0 + timedelta(hours=1), history=[old])
    assert decisions[-1].drift_streak == 3 and decisions[-1].retrain
    assert decisions[-1].accuracy_streak == 2
