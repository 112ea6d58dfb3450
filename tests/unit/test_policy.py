"""The retraining policy: triggers, brakes, and the decision log."""

from datetime import UTC, datetime, timedelta

import pytest

from visionline.config import PolicyConfig
from visionline.monitoring.policy import decide, decision_log, record_decision
from visionline.storage import LocalStore

T0 = datetime(2024, 5, 1, tzinfo=UTC)
POLICY = PolicyConfig(
    drift_windows=3, min_accuracy=0.9, min_labels=50, cooldown_hours=24, max_retrains_per_week=2
)


def _run(verdicts, start=T0, policy=POLICY, labelled=None, history=None, version="1"):
    """One decision per hourly window, each seeing the ones before."""
    history = list(history or [])
    out = []
    for i, drifted in enumerate(verdicts):
        d = decide(policy, start + timedelta(hours=i), "m", version, drifted, labelled, history)
        history.append(d.to_dict())
        out.append(d)
    return out, history


def test_retrain_after_n_drifted_windows_and_not_before():
    decisions, _ = _run([True, True, True])
    assert [d.retrain for d in decisions] == [False, False, True]
    assert [d.drift_streak for d in decisions] == [1, 2, 3]
    assert "drift in 3 consecutive windows" in decisions[-1].reasons[0]
    assert "1 consecutive drifted window(s), retrain at 3" in decisions[0].reasons[0]


def test_a_clean_window_restarts_the_count_and_no_verdict_does_not():
    decisions, _ = _run([True, True, False, True, True, None, True])
    assert [d.drift_streak for d in decisions] == [1, 2, 0, 1, 2, 2, 3]
    assert [d.retrain for d in decisions] == [False] * 6 + [True]


def test_cooldown_holds_a_second_retrain():
    decisions, history = _run([True] * 5)
    assert [d.retrain for d in decisions] == [False, False, True, False, False]
    # after a retrain the streak starts again, so drift must persist N windows anew...
    assert decisions[3].drift_streak == 1
    # ...and when it has, the cooldown still holds the retrain
    later, _ = _run([True, True, True], start=T0 + timedelta(hours=10), history=history)
    assert not later[-1].retrain
    assert any(r.startswith("cooldown: the last retrain was 10.0 h ago") for r in later[-1].reasons)
    # once the cooldown has passed, the same evidence retrains
    after, _ = _run([True], start=T0 + timedelta(hours=30), history=history)
    assert after[0].retrain


def test_at_most_max_retrains_a_week():
    policy = POLICY.model_copy(update={"cooldown_hours": 0, "drift_windows": 1})
    decisions, history = _run([True] * 4, policy=policy)
    assert [d.retrain for d in decisions] == [True, True, False, False]
    assert "2 retrains in the last 7 days (policy: at most 2)" in decisions[2].reasons
    week_later, _ = _run(
        [True], start=T0 + timedelta(days=7, hours=2), policy=policy, history=history
    )
    assert week_later[0].retrain


def test_labelled_accuracy_needs_enough_labels():
    few, _ = _run([False], labelled={"n": 49, "accuracy": 0.5})
    assert not few[0].retrain and "49 labels, fewer than 50" in few[0].reasons[-1]
    bad, _ = _run([False], labelled={"n": 50, "accuracy": 0.85})
    assert bad[0].retrain and "labelled accuracy 0.8500 on 50 labels is under 0.9" in bad[0].reasons
    good, _ = _run([False], labelled={"n": 500, "accuracy": 0.95})
    assert not good[0].retrain


def test_a_new_version_starts_its_own_drift_count():
    _, history = _run([True, True], version="1")
    decisions, _ = _run([True], start=T0 + timedelta(hours=2), history=history, version="2")
    assert decisions[0].drift_streak == 1 and not decisions[0].retrain


def test_decision_log_is_append_only_and_ordered(tmp_path):
    store = LocalStore(tmp_path)
    decisions, _ = _run([True, True, True])
    keys = [record_decision(store, d) for d in reversed(decisions)]
    assert keys[0].endswith("-retrain.json") and keys[1].endswith("-hold.json")
    log = decision_log(store, "m")
    assert [e["retrain"] for e in log] == [False, False, True]
    assert [e["time"] for e in log] == sorted(e["time"] for e in log)


@pytest.mark.parametrize(
    "bad", [{"drift_windows": 0}, {"min_accuracy": 1.5}, {"cooldown_hours": -1}]
)
def test_policy_config_is_validated(bad):
    from visionline.config import parse_config
    from visionline.errors import ConfigError

    with pytest.raises(ConfigError, match=r"monitor\.policy\." + next(iter(bad))):
        parse_config({"data": {"dataset": "d"}, "monitor": {"policy": bad}})
