"""The canary's watchdog rides out the API server's hiccups and stops on its answers;
a rollout on Kubernetes whose names are too long for a challenger has none."""

from __future__ import annotations

import pytest

from tests.conftest import REPO
from visionline.config import RolloutConfig, load_config
from visionline.errors import ServingError
from visionline.kube import KubernetesApiError, KubernetesPermissionError
from visionline.serving.kubernetes.rollout import KubernetesRollout
from visionline.serving.rollout import watch as watchdog
from visionline.serving.rollout.local import RolloutChanged, same_rollout
from visionline.storage import LocalStore


def _records(side: str, n: int, status: int) -> list[dict]:
    return [
        {"id": f"{side}-{i}", "side": side, "status": status, "request_time": 0.01}
        for i in range(n)
    ]


class FlakyCanary:
    """A canary whose challenger answers every request with a 500, read through an
    API that fails ``errors`` times in a row first (each with ``status``)."""

    def __init__(self, errors: int, status: int | None) -> None:
        self.rcfg = RolloutConfig(min_requests=10)
        self.errors, self.status = errors, status
        self.ended: list[tuple[str, str]] = []

    def state(self) -> dict | None:
        return None if self.ended else {"mode": "canary", "challenger": "digits:2"}

    def records(self, state: dict) -> list[dict]:
        if self.errors:
            self.errors -= 1
            raise KubernetesApiError("list pods: the server is busy", self.status)
        return _records("champion", 20, 200) + _records("challenger", 20, 500)

    def end(self, action: str, reason: str = "", expected: dict | None = None) -> dict:
        self.ended.append((action, reason))
        return {}


@pytest.mark.parametrize("status", [None, 429, 503])
def test_transient_errors_are_ridden_out_and_the_canary_still_rolled_back(status):
    canary = FlakyCanary(errors=3, status=status)
    reason = watchdog.watch(canary, interval_s=0)
    assert reason and reason.startswith("errors: error rate 100.00%")
    assert canary.ended == [("rollback", reason)]


def test_a_refusal_or_too_many_failures_stop_the_watch():
    with pytest.raises(KubernetesPermissionError):
        canary = FlakyCanary(errors=1, status=403)
        canary.records = lambda state: (_ for _ in ()).throw(
            KubernetesPermissionError("get pods/log: forbidden", 403)
        )
        watchdog.watch(canary, interval_s=0)
    endless = FlakyCanary(errors=watchdog.MAX_TRANSIENT + 1, status=503)
    with pytest.raises(KubernetesApiError, match="busy"):
        watchdog.watch(endless, interval_s=0)
    assert endless.ended == []


def test_names_too_long_for_a_challenger_mean_no_rollout(tmp_path):
    """A plain deploy asks whether a rollout runs; a champion whose name leaves no room
    for the challenger's suffix has none, and is not refused for it."""
    cfg = load_config(REPO / "configs" / "digits.yaml").with_overrides(
        **{"deploy.target": "kubernetes", "deploy.kubernetes.deployment": "d" * 60}
    )
    assert KubernetesRollout(cfg, LocalStore(tmp_path / "store")).state() is None


class EndedElsewhere(FlakyCanary):
    """A failing canary that another process ends (a promote, an abort) between the
    watchdog's read of it and its rollback; ``then`` is what runs after: nothing, or
    another rollout."""

    def __init__(self, then: dict | None) -> None:
        super().__init__(errors=0, status=None)
        self.current: dict | None = {"mode": "canary", "challenger": "digits:2", "started": "t1"}
        self.then = then

    def state(self) -> dict | None:
        return self.current

    def end(self, action: str, reason: str = "", expected: dict | None = None) -> dict:
        self.current = self.then  # the other process got there first
        if self.current is None:
            raise ServingError("no rollout is in progress")
        if expected is not None and not same_rollout(self.current, expected):
            raise RolloutChanged("the rollout of digits:2 is no longer the one in progress")
        self.ended.append((action, reason))
        return {}


@pytest.mark.parametrize(
    "then", [None, {"mode": "shadow", "challenger": "digits:3", "started": "t2"}]
)
def test_a_rollout_ended_elsewhere_first_ends_the_watch_quietly(then):
    """The watchdog's rollback loses the race to a promote or an abort: it neither fails
    nor takes down what runs now, and it stops watching (a new rollout has its own)."""
    canary = EndedElsewhere(then)
    assert watchdog.watch(canary, interval_s=0, timeout_s=5) is None
    assert canary.ended == []
    assert canary.current == then


def test_a_failed_rollback_of_the_rollout_still_running_is_not_swallowed():
    class Stuck(EndedElsewhere):
        def end(self, action: str, reason: str = "", expected: dict | None = None) -> dict:
            raise ServingError("the champion's plain front did not come back")

    with pytest.raises(ServingError, match="plain front did not come back"):
        watchdog.watch(Stuck(then=None), interval_s=0, timeout_s=5)


class _ServingChampion:
    """The local server a rollout stands beside, as far as ending one touches it: it
    serves the champion, and taking the rollout front out takes a while (a graceful
    nginx reload), long enough for two enders to meet inside ``end``."""

    def __init__(self, workdir) -> None:
        from visionline.config import ServeConfig

        self.workdir, self.cfg = workdir, ServeConfig()
        self.fronts: list = []

    def served(self):
        from visionline.registry import ModelRef

        return ModelRef("digits", "1")

    def set_rollout(self, front) -> None:
        import time

        time.sleep(0.3)
        self.fronts.append(front)


def test_a_promote_and_a_rollback_of_the_same_local_rollout_end_it_once(tmp_path):
    """The promote (a CLI) and the canary's watchdog (a process of its own) read the same
    rollout and end it at the same moment: one ends it, the other is told there is none
    (and would deploy nothing), and the events log says how it ended once."""
    import json

    from tests.support.rollout import end_at_once
    from visionline.serving.rollout.local import LocalRollout

    champion = _ServingChampion(tmp_path / "serve")
    ro = LocalRollout(champion, LocalStore(tmp_path / "store"), RolloutConfig())
    state = {
        "active": True,
        "mode": "canary",
        "percent": 10,
        "champion": "digits:1",
        "challenger": "digits:2",
        "started": "2026-12-07T18:00:00+00:00",
        "log": str(tmp_path / "requests.jsonl"),
    }
    ro._write(state)
    ended, refused = end_at_once({"promote": ro, "rollback": ro}, state, timeout=10)
    assert len(ended) == 1 and len(refused) == 1, refused
    assert "no rollout is in progress" in str(refused[0])
    assert champion.fronts == [None]  # the front was taken out once
    events = [json.loads(line) for line in ro.events.read_text().splitlines()]
    assert [e["action"] for e in events] == ended
    assert ro.last()["outcome"] == ended[0]
