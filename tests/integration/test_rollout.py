"""Shadow and canary rollouts on this machine, as a user runs them: the champion under
``visionline serve``, a challenger (a second version of the same model whose handler
is made slow, failing or wrong on purpose) started by ``visionline deploy --shadow`` or
``--canary``, steady load from 8 clients through the real nginx front, and the verdict
from ``visionline rollout status / promote / abort``."""

from __future__ import annotations

import asyncio
import csv
import itertools
import json
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
import requests
from prefect.client.orchestration import get_client

from flows.rollout import rollout_verdict
from tests.support.rollout import fault, register_variant
from tests.support.serving import served_digits, visionline_cli
from visionline.monitoring.capture_windows import read_captures, wait_for_captures
from visionline.registry import Registry
from visionline.serving.torchserve import TorchServe

pytestmark = [pytest.mark.torchserve, pytest.mark.slow]
CLIENTS = 8


def _images(digits_dir: Path) -> list[tuple[bytes, str]]:
    files = sorted(digits_dir.glob("*/*"))[::7]
    return [(f.read_bytes(), f.parent.name) for f in files]


def _load(
    url: str, token: str, images, per_client: int, stop=None, until_s: float = 0
) -> list[dict]:
    """``CLIENTS`` threads, each on its own keepalive session; one record per request.
    With ``stop``, each client sends at least ``per_client`` requests and goes on (for
    at most ``until_s`` seconds) until ``stop()`` holds: the watcher is a process of
    its own whose start on a loaded machine no fixed count of requests can outlast."""
    out: list[dict] = []
    lock = threading.Lock()
    deadline = time.monotonic() + until_s

    def client(c: int) -> None:
        s = requests.Session()
        for i in itertools.count():
            if stop is not None and stop():
                return
            if i >= per_client and (stop is None or time.monotonic() > deadline):
                return
            body, truth = images[(c * per_client + i) % len(images)]
            t = time.monotonic()
            r = s.post(url, data=body, headers={"Authorization": f"Bearer {token}"}, timeout=60)
            rec = {
                "id": r.headers.get("X-Request-Id"),
                "status": r.status_code,
                "seconds": time.monotonic() - t,
                "truth": truth,
                "answer": max(r.json(), key=r.json().get) if r.ok else None,
            }
            with lock:
                out.append(rec)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _request_log(tsdir: Path) -> list[dict]:
    return [json.loads(x) for f in (tsdir / "rollout").glob("*-requests.jsonl") for x in f.open()]


def _waited(tsdir: Path, answered: list[dict]) -> float:
    """The longest a client waited beyond what the front took for the champion's side."""
    log = _request_log(tsdir)
    front = {x["id"]: x["request_time"] for x in log if x["side"] == "champion"}
    return max(r["seconds"] - front[r["id"]] for r in answered)


def _labels_csv(work: Path, answered: list[dict]) -> Path:
    """Late labels for every request: its true class."""
    path = work / "labels.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["request_id", "label"])
        w.writerows((r["id"], r["truth"]) for r in answered)
    return path


def _config(served: dict, work: Path, **rollout) -> Path:
    cfg = served["cfg"].with_overrides(**{f"deploy.rollout.{k}": v for k, v in rollout.items()})
    path = work / "rollout.yaml"
    path.write_text(cfg.to_yaml())
    return path


def test_shadow_users_get_only_the_champion_and_a_worse_challenger_is_not_promoted(
    packaged_digits, digits_dir, tmp_path, prefect_api
):
    store, ref, _ = packaged_digits
    # slow (5 s) on 5% of its batches, failing on 10%, wrong on 30% of its answers
    challenger = register_variant(
        store, ref, fault(slow=0.05, fail=0.1, wrong=0.3, sleep_s=5.0), tmp_path / "variant"
    )
    images = _images(digits_dir)
    with served_digits(packaged_digits, tmp_path) as served:
        # a mirrored request unanswered after 4 s is logged as the challenger's 504
        cfg = _config(served, tmp_path, min_requests=40, min_labelled=20, challenger_timeout_s=4)
        workdir = str(served["tsdir"])
        started = visionline_cli(
            cfg, "deploy", str(challenger), "--shadow", "50", "--workdir", workdir
        )
        assert started.returncode == 0, started.stdout + started.stderr
        assert "50% of predictions mirrored to" in started.stdout
        since = json.loads((served["tsdir"] / "rollout" / "rollout.json").read_text())["started"]
        url = f"{served['root']}/predictions/{ref.name}"
        answered = _load(url, served["keys"]["inference"]["key"], images, per_client=30)

        # users: every request answered, and none waited for the slow challenger (5 s):
        # what a client measured is what the champion's side took at the front (a mirror
        # that held a keepalive connection would add its wait before the next request)
        assert [r["status"] for r in answered] == [200] * len(answered)
        waited = _waited(served["tsdir"], answered)
        assert waited < 2.5, waited
        ids = {r["id"] for r in answered}
        assert len(ids) == len(answered) == CLIENTS * 30
        # ... and each got the champion's answer, as the champion captured it
        t0 = datetime.fromisoformat(since)
        assert wait_for_captures(store, ref.name, ref.version, t0, len(ids)) >= len(ids)
        champ = read_captures(
            store, ref.name, ref.version, t0, None, ["request_id", "label", "time"]
        )
        champ = dict(zip(champ["request_id"], champ["label"], strict=True))
        assert all(champ[r["id"]] == r["answer"] for r in answered)

        # the challenger got the mirrored half, with the same request ids
        time.sleep(6)  # the last slow mirrored requests
        lines = _request_log(served["tsdir"])
        mirrored = {x["id"] for x in lines if x["side"] == "challenger"}
        assert mirrored <= ids and abs(len(mirrored) - len(ids) / 2) < 4 * (len(ids) / 4) ** 0.5
        ok = sum(1 for x in lines if x["side"] == "challenger" and x["status"] == 200)
        assert wait_for_captures(store, ref.name, challenger.version, t0, ok) >= ok
        chall = read_captures(
            store, ref.name, challenger.version, t0, None, ["request_id", "label", "time"]
        )
        differ = [
            rid
            for rid, lab in zip(chall["request_id"], chall["label"], strict=True)
            if champ[rid] != lab
        ]
        assert differ, "the wrong challenger disagreed nowhere: the check above has no teeth"

        status = visionline_cli(cfg, "rollout", "status", "--workdir", workdir)
        assert status.returncode == 0, status.stderr
        assert "Wilson interval" in status.stdout and "disagreement" in status.stdout
        assert "needs" in status.stdout and "more labels" in status.stdout

        # late labels for the shadowed requests: McNemar and the non-inferiority decision
        labels = _labels_csv(tmp_path, answered)
        fed = visionline_cli(cfg, "labels", "feedback", str(labels), "--model", ref.name)
        assert fed.returncode == 0, fed.stdout + fed.stderr
        status = visionline_cli(cfg, "rollout", "status", "--workdir", workdir)
        assert "McNemar p =" in status.stdout and "decision: not promotable" in status.stdout
        assert "[FAIL] accuracy" in status.stdout, status.stdout
        assert "non-inferior when above -2.00%" in status.stdout, status.stdout
        promote = visionline_cli(cfg, "rollout", "promote", "--workdir", workdir)
        assert promote.returncode == 1 and "blocked by accuracy" in promote.stderr, promote
        assert "is the champion" not in promote.stdout
        _the_flow_publishes_the_verdict_and_does_not_promote(cfg, workdir)

        aborted = visionline_cli(cfg, "rollout", "abort", "--workdir", workdir)
        assert aborted.returncode == 0 and "aborted" in aborted.stdout, aborted.stderr
        again = _load(url, served["keys"]["inference"]["key"], images, per_client=2)
        assert [r["status"] for r in again] == [200] * len(again)
        challenger_dir = served["tsdir"] / "rollout" / "challenger"
        assert not TorchServe(challenger_dir, served["cfg"].serve).is_running()


def test_a_canary_failing_5_percent_is_rolled_back_on_its_own(
    packaged_digits, digits_dir, tmp_path
):
    store, ref, _ = packaged_digits
    challenger = register_variant(store, ref, fault(fail=0.05), tmp_path / "variant")
    images = _images(digits_dir)
    with served_digits(packaged_digits, tmp_path) as served:
        # batch 1 for the challenger: a failed batch is one failed request
        served = {**served, "cfg": served["cfg"].with_overrides(**{"serve.batch_size": 1})}
        cfg = _config(served, tmp_path, min_requests=40, watch_interval_s=1, latency_slack_ms=60000)
        workdir = served["tsdir"]
        started = visionline_cli(
            cfg, "deploy", str(challenger), "--canary", "50", "--workdir", str(workdir)
        )
        assert started.returncode == 0, started.stdout + started.stderr
        state = workdir / "rollout" / "rollout.json"
        url = f"{served['root']}/predictions/{ref.name}"
        answered = _load(
            url,
            served["keys"]["inference"]["key"],
            images,
            per_client=50,
            stop=lambda: not json.loads(state.read_text())["active"],
            until_s=300,
        )
        ended = json.loads(state.read_text())
        assert not ended["active"] and ended["outcome"] == "rollback", ended
        assert ended["reason"].startswith("errors: error rate"), ended["reason"]
        events = [json.loads(x) for x in (workdir / "rollout" / "events.jsonl").open()]
        assert events[-1]["action"] == "rollback" and events[-1]["reason"] == ended["reason"]
        assert any(r["status"] >= 500 for r in answered)  # users saw the canary's errors
        after = _load(url, served["keys"]["inference"]["key"], images, per_client=5)
        assert [r["status"] for r in after] == [200] * len(after)
        status = visionline_cli(cfg, "rollout", "status", "--workdir", str(workdir))
        assert "rollback" in status.stdout and "errors: error rate" in status.stdout


def _the_flow_publishes_the_verdict_and_does_not_promote(cfg: Path, workdir: str) -> None:
    judged = rollout_verdict(str(cfg), workdir, promote=True)
    assert judged["promoted"] is None and judged["state"]["active"]
    artifacts = _latest_artifacts()
    assert "not promotable" in artifacts["rollout"].description
    assert "McNemar p =" in artifacts["rollout"].data
    checks = {row["check"]: row for row in json.loads(artifacts["rollout-checks"].data)}
    assert checks["accuracy"]["passed"] is False and checks["errors"]["passed"] is False


def _latest_artifacts() -> dict:
    async def read() -> dict:
        async with get_client() as client:
            return {a.key: a for a in await client.read_latest_artifacts()}

    return asyncio.run(read())


@pytest.fixture
def champion_restored(packaged_digits):
    """The session's packaged digits stays the champion for the tests after this one
    (the test_serving server serves whatever the registry's champion is)."""
    store, ref, _ = packaged_digits
    yield
    Registry(store, ref.name).promote(ref.version, "test_rollout: the session's champion back")


def test_an_equal_challenger_is_promoted_by_the_flow_once_labels_show_it(
    packaged_digits, digits_dir, tmp_path, prefect_api, champion_restored
):
    store, ref, _ = packaged_digits
    challenger = register_variant(store, ref, fault(), tmp_path / "variant")  # no fault
    images = _images(digits_dir)
    with served_digits(packaged_digits, tmp_path) as served:
        # the same model on a second server: its p99 on a loaded test machine is noise,
        # which the slack keeps out of a test of the accuracy check and the promotion
        cfg = _config(served, tmp_path, min_requests=40, min_labelled=40, latency_slack_ms=60000)
        workdir = str(served["tsdir"])
        started = visionline_cli(cfg, "deploy", str(challenger), "--shadow", "--workdir", workdir)
        assert started.returncode == 0, started.stdout + started.stderr
        since = json.loads((served["tsdir"] / "rollout" / "rollout.json").read_text())["started"]
        url = f"{served['root']}/predictions/{ref.name}"
        answered = _load(url, served["keys"]["inference"]["key"], images, per_client=10)
        t0 = datetime.fromisoformat(since)
        for version in (ref.version, challenger.version):  # every answer captured by both
            assert wait_for_captures(store, ref.name, version, t0, len(answered)) >= len(answered)

        # without labels the accuracy check blocks it, and says how many it needs
        judged = rollout_verdict(str(cfg), workdir, promote=True)
        assert judged["promoted"] is None
        checks = {c["name"]: c for c in judged["report"]["verdict"]["checks"]}
        assert not checks["accuracy"]["passed"] and checks["accuracy"]["needs"] == 40

        labels = _labels_csv(tmp_path, answered)
        fed = visionline_cli(cfg, "labels", "feedback", str(labels), "--model", ref.name)
        assert fed.returncode == 0, fed.stdout + fed.stderr
        judged = rollout_verdict(str(cfg), workdir, promote=True)
        blocking = [c for c in judged["report"]["verdict"]["checks"] if not c["passed"]]
        assert judged["promoted"] and not blocking, blocking
        assert judged["state"]["outcome"] == "promote" and not judged["state"]["active"]
        assert Registry(store, ref.name).aliases()["champion"] == challenger.version
        assert "promoted, serving at" in _latest_artifacts()["rollout"].description
        # users are answered by the new champion alone (a deploy starts TorchServe anew,
        # with new tokens), and the challenger's server is gone
        keys = json.loads((served["tsdir"] / "key_file.json").read_text())
        assert keys["inference"]["key"] != served["keys"]["inference"]["key"]
        after = _load(url, keys["inference"]["key"], images, per_client=2)
        assert [r["status"] for r in after] == [200] * len(after)
        challenger_dir = served["tsdir"] / "rollout" / "challenger"
        assert not TorchServe(challenger_dir, served["cfg"].serve).is_running()
