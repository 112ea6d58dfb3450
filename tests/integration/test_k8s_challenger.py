"""A rollout on Kubernetes (issue 20) on the strict test cluster: RBAC from the shipped
Roles (the commands run as the pipeline's service account, through a kubeconfig as a
user's), every object validated against the 1.31 schemas, deletion with garbage
collection; the test plays the Deployment controller (``DeploymentController``).

`visionline deploy --shadow --target kubernetes` creates the challenger's Deployment and
Service and points the champion's front at them; `visionline rollout status` reports
what exists and reads the request log from the champion pods' fronts; `visionline
rollout abort` restores the champion's front and removes the challenger's objects, and
the champion's Deployment is as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
import yaml

import flows.tasks as flow_tasks
from tests.conftest import REPO
from tests.support.k8s import Cluster, DeploymentController
from tests.support.k8s.rbac import PIPELINE, token
from tests.support.rollout import end_at_once
from tests.support.waiting import until
from visionline.config import load_config
from visionline.errors import ServingError
from visionline.registry import ModelRef, Registry
from visionline.serving.kubernetes import KubernetesDeployer
from visionline.serving.kubernetes.rollout import KubernetesRollout
from visionline.serving.nginx import new_token
from visionline.storage import LocalStore

NS = "vl-challenger"
CHAMPION = "visionline-torchserve"
CHALLENGER = "visionline-torchserve-challenger"
ROLLOUT_FRONT = "rollout-front"


@pytest.fixture
def cluster():
    with Cluster() as c:
        yield c


@pytest.fixture
def setup(cluster, tmp_path):
    """Versions 1 (the champion, deployed by an operator) and 2 of digits, the
    credential Secret, the Deployment controller, a config and a kubeconfig as the
    pipeline's service account."""
    from kubernetes import client

    store = LocalStore(tmp_path / "store")
    reg = Registry(store, "digits")
    for v in ("1", "2"):
        reg.register(v, {"run_id": f"run-{v}", "sha256": v * 64, "parity_keys": ["k"]})
    reg.promote("1", "fixture")
    client.CoreV1Api(cluster.admin_client()).create_namespaced_secret(
        NS,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "visionline-inference-credentials", "namespace": NS},
            "stringData": {new_token(): "pipeline"},
        },
    )
    controller = DeploymentController(cluster, NS, lambda t: True)
    controller.start()
    cfg = load_config(REPO / "configs" / "digits.yaml").with_overrides(
        **{
            "store": store.uri,
            "deploy.target": "kubernetes",
            "deploy.kubernetes.namespace": NS,
            "deploy.kubernetes.poll_seconds": 0.1,
            "deploy.kubernetes.rollout_timeout_seconds": 10,
        }
    )
    KubernetesDeployer(cfg, store, api_client=cluster.admin_client()).deploy(
        ModelRef("digits", "1")
    )
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(cfg.to_yaml())
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "test", "cluster": {"server": cluster.url}}],
                "users": [{"name": "test", "user": {"token": token(PIPELINE)}}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
                "current-context": "test",
            }
        )
    )
    yield {
        "cfg": cfg,
        "cfg_path": cfg_path,
        "kubeconfig": kubeconfig,
        "store": store,
        "controller": controller,
    }
    controller.close()
    assert not controller.errors, controller.errors


def _cli(setup, *args: str) -> subprocess.CompletedProcess:
    """``visionline ARGS`` as a user with the pipeline's kubeconfig types it."""
    env = {**os.environ, "KUBECONFIG": str(setup["kubeconfig"])}
    env.pop("KUBERNETES_SERVICE_HOST", None)  # not in a pod: the kubeconfig decides
    return subprocess.run(
        [sys.executable, "-m", "visionline.cli", "--config", str(setup["cfg_path"]), *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )


def _get(cluster, kind: str, name: str) -> dict | None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = cluster.admin_client()
    read = {
        "Deployment": client.AppsV1Api(api).read_namespaced_deployment,
        "Service": client.CoreV1Api(api).read_namespaced_service,
        "ConfigMap": client.CoreV1Api(api).read_namespaced_config_map,
    }[kind]
    try:
        return api.sanitize_for_serialization(read(name, NS))
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def _front(template: dict) -> str | None:
    vols = {v["name"]: v for v in template["spec"]["volumes"]}
    return vols[ROLLOUT_FRONT]["configMap"]["name"] if ROLLOUT_FRONT in vols else None


def _champion_pod(cluster, template: dict, name: str) -> None:
    """A pod of the champion's current template, as its ReplicaSet creates it."""
    from kubernetes import client

    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    }
    client.CoreV1Api(cluster.admin_client()).create_namespaced_pod(NS, pod)


# what the rollout front writes to its container's stdout: its plain access log and,
# per answered prediction and side, a JSON line (log_format visionline_rollout)
FRONT_LOG = [
    '10.0.0.9 "POST /predictions/digits HTTP/1.1" 200 61 0.012',
    '{"time": 1.0, "id": "a1", "side": "champion", "status": 200, "upstream_status": "200", '
    '"request_time": 0.012, "upstream_time": "0.011"}',
    '{"time": 1.0, "id": "a1", "side": "challenger", "status": 200, "upstream_status": "200", '
    '"request_time": 0.020, "upstream_time": "0.019"}',
    '{"time": 1.1, "id": "a2", "side": "champion", "status": 200, "upstream_status": "200", '
    '"request_time": 0.010, "upstream_time": "0.009"}',
]


def test_shadow_on_kubernetes_deploys_reports_and_aborts(cluster, setup):
    before = _get(cluster, "Deployment", CHAMPION)
    assert _front(before["spec"]["template"]) is None

    started = _cli(setup, "deploy", "digits:2", "--shadow", "25", "--target", "kubernetes")
    assert started.returncode == 0, started.stderr
    assert "shadow rollout: 25% of predictions mirrored to digits:2" in started.stdout

    # the challenger: its own Deployment (1 replica, version 2) and ClusterIP Service
    dep = _get(cluster, "Deployment", CHALLENGER)
    tpl = dep["spec"]["template"]
    assert dep["spec"]["replicas"] == 1
    assert tpl["metadata"]["labels"]["app.kubernetes.io/component"] == "challenger"
    assert tpl["metadata"]["annotations"]["visionline.io/model"] == "digits:2"
    svc = _get(cluster, "Service", CHALLENGER)
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    # the champion's front mounts the rollout's nginx.conf, mirroring 25% to that Service
    champion = _get(cluster, "Deployment", CHAMPION)
    cm = _get(cluster, "ConfigMap", _front(champion["spec"]["template"]))
    conf = cm["data"]["nginx.conf"]
    assert "mirror /_visionline_mirror;" in conf and "25% challenger;" in conf
    assert f"http://{CHALLENGER}.{NS}.svc:8080" in conf
    # Service and ConfigMap go with the challenger's Deployment
    for obj in (svc, cm):
        [owner] = obj["metadata"]["ownerReferences"]
        assert owner["uid"] == dep["metadata"]["uid"]
    # the champion still serves version 1: only its front changed
    ptpl = champion["spec"]["template"]
    assert ptpl["metadata"]["annotations"] == before["spec"]["template"]["metadata"]["annotations"]
    assert ptpl["spec"]["initContainers"] == before["spec"]["template"]["spec"]["initContainers"]

    # status: what exists; no champion pod has a log yet, and it says so
    status = _cli(setup, "rollout", "status", "--target", "kubernetes")
    assert status.returncode == 0, status.stderr
    out = status.stdout
    assert "shadow rollout since" in out and "(25%)" in out
    assert f"challenger: Deployment {NS}/{CHALLENGER} serves digits:2" in out
    assert f"Service {NS}/{CHALLENGER} at" in out
    assert f"through the rollout front (ConfigMap {cm['metadata']['name']})" in out
    assert "request log: none could be read" in out

    # a champion pod of the rollout front has logged three answers: they are counted
    _champion_pod(cluster, ptpl, f"{CHAMPION}-rollout-x1")
    for line in FRONT_LOG:
        cluster.append_log(NS, f"{CHAMPION}-rollout-x1", line)
    report = json.loads(_cli(setup, "rollout", "status", "--json", "--target", "kubernetes").stdout)
    assert report["request_log"] == {
        "pods": [f"{CHAMPION}-rollout-x1"],
        "unreadable": {},
        "lines": 3,
    }
    assert report["sides"]["champion"]["requests"] == 2
    assert report["sides"]["challenger"]["requests"] == 1

    # a plain deploy waits for the rollout to end
    plain = _cli(setup, "deploy", "digits:2", "--target", "kubernetes")
    assert plain.returncode != 0 and "rollout abort first" in plain.stderr

    aborted = _cli(setup, "rollout", "abort", "--target", "kubernetes", "--reason", "test")
    assert aborted.returncode == 0, aborted.stderr
    assert "aborted: digits:2 is no longer served; digits:1 answers" in aborted.stdout
    for kind, name in (
        ("Deployment", CHALLENGER),
        ("Service", CHALLENGER),
        ("ConfigMap", cm["metadata"]["name"]),
    ):
        assert _get(cluster, kind, name) is None, (kind, name)
    after = _get(cluster, "Deployment", CHAMPION)
    assert after["spec"]["template"] == before["spec"]["template"]  # the champion untouched
    assert Registry(setup["store"], "digits").aliases()["champion"] == "1"
    assert not cluster.rejected  # every object validated (1.31, strict)
    assert not cluster.forbidden  # the pipeline's Role granted each call

    gone = _cli(setup, "rollout", "status", "--target", "kubernetes")
    assert gone.returncode != 0 and "no rollout is in progress on Kubernetes" in gone.stderr


def test_canary_promote_is_blocked_without_traffic_and_a_second_rollout_refused(
    cluster, setup, monkeypatch
):
    ro = KubernetesRollout(setup["cfg"], setup["store"], api_client=cluster.api_client())
    state = ro.start(ModelRef("digits", "2"), "canary", 10)
    assert state["mode"] == "canary" and state["champion"] == "digits:1"
    before = _get(cluster, "Deployment", CHAMPION)
    conf = _get(cluster, "ConfigMap", _front(before["spec"]["template"]))
    assert "/_visionline_canary$1 last" in conf["data"]["nginx.conf"]
    with pytest.raises(Exception, match="rollout of digits:2 is in progress"):
        ro.start(ModelRef("digits", "2"), "shadow", 50)
    # nor does the pipeline's deploy step replace the champion under a running rollout
    monkeypatch.setenv("KUBECONFIG", str(setup["kubeconfig"]))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ServingError, match="rollout of digits:2 is in progress"):
        flow_tasks.deploy.fn(setup["cfg"], ModelRef("digits", "2"))
    assert _get(cluster, "Deployment", CHAMPION)["spec"] == before["spec"]

    report, result = ro.promote()
    assert result is None  # no request answered: the verdict blocks it
    assert any(c.name == "requests" for c in report["_verdict"].blocking)
    assert _get(cluster, "Deployment", CHALLENGER) is not None  # still running

    ended = ro.end("abort", "test")
    assert ended["outcome"] == "abort" and ro.state() is None
    assert _get(cluster, "Deployment", CHALLENGER) is None
    assert _front(_get(cluster, "Deployment", CHAMPION)["spec"]["template"]) is None
    assert not cluster.forbidden and not cluster.rejected


def test_a_challenger_that_never_becomes_available_leaves_nothing_behind(cluster, setup):
    """Its fetch-model keeps failing: the rollout does not start, the champion's front is
    never touched, and the challenger's objects are removed."""
    from visionline.serving.deploy import DeploymentError

    before = _get(cluster, "Deployment", CHAMPION)
    setup["controller"].healthy = lambda t: (
        t["metadata"]["annotations"]["visionline.io/model"] != "digits:2"
    )
    ro = KubernetesRollout(setup["cfg"], setup["store"], api_client=cluster.api_client())
    with pytest.raises(DeploymentError, match="fetching the model keeps failing"):
        ro.start(ModelRef("digits", "2"), "shadow", 100)
    assert _get(cluster, "Deployment", CHALLENGER) is None
    assert _get(cluster, "Service", CHALLENGER) is None
    assert _get(cluster, "Deployment", CHAMPION)["spec"]["template"] == before["spec"]["template"]
    assert ro.state() is None and not cluster.forbidden


def _line(i: int, side: str, status: int) -> str:
    return json.dumps(
        {
            "time": i,
            "id": f"r{i}",
            "side": side,
            "status": status,
            "upstream_status": str(status),
            "request_time": 0.01,
            "upstream_time": "0.01",
        }
    )


def test_the_canary_watchdog_rolls_back_on_the_fronts_logs(cluster, setup):
    """``visionline rollout watch --target kubernetes``, one check: the challenger's share
    errs (5 of 20, read from a champion pod's front log), so it is rolled back."""
    from visionline.serving.rollout.watch import check_once

    cfg = setup["cfg"].with_overrides(**{"deploy.rollout.min_requests": 10})
    ro = KubernetesRollout(cfg, setup["store"], api_client=cluster.api_client())
    ro.start(ModelRef("digits", "2"), "canary", 10)
    assert check_once(ro) is None  # nothing answered yet: too early to judge
    pod = f"{CHAMPION}-canary-x1"
    _champion_pod(cluster, _get(cluster, "Deployment", CHAMPION)["spec"]["template"], pod)
    for i in range(20):
        cluster.append_log(NS, pod, _line(i, "champion", 200))
        cluster.append_log(NS, pod, _line(100 + i, "challenger", 503 if i % 4 == 0 else 200))
    reason = check_once(ro)
    assert reason and "errors" in reason
    assert ro.state() is None and _get(cluster, "Deployment", CHALLENGER) is None
    assert _front(_get(cluster, "Deployment", CHAMPION)["spec"]["template"]) is None
    assert not cluster.forbidden


def test_the_challenger_outlives_the_last_old_front_still_draining(cluster, setup):
    """An abort puts the plain front back, but an old pod in its preStop drain still
    answers and still sends the challenger its share: the challenger's Deployment and
    Service stay until that pod is gone."""

    from kubernetes import client

    ro = KubernetesRollout(setup["cfg"], setup["store"], api_client=cluster.api_client())
    ro.start(ModelRef("digits", "2"), "shadow", 50)
    rollout_template = _get(cluster, "Deployment", CHAMPION)["spec"]["template"]
    assert _front(rollout_template)
    draining = f"{CHAMPION}-old-draining"
    plain_front_back = ro._set_front

    def set_front_then_one_old_pod_drains(change) -> None:
        plain_front_back(change)
        _champion_pod(cluster, rollout_template, draining)  # the ReplicaSet's last old pod

    ro._set_front = set_front_then_one_old_pod_drains
    ended = threading.Thread(target=ro.end, args=("abort", "test"))
    ended.start()
    until(
        "the plain front",
        lambda: not _front(_get(cluster, "Deployment", CHAMPION)["spec"]["template"]),
    )
    time.sleep(1.0)
    assert _get(cluster, "Deployment", CHALLENGER) is not None  # still sent to: kept
    assert _get(cluster, "Service", CHALLENGER) is not None
    client.CoreV1Api(cluster.admin_client()).delete_namespaced_pod(draining, NS)
    ended.join(timeout=30)
    assert not ended.is_alive()
    assert _get(cluster, "Deployment", CHALLENGER) is None
    assert not cluster.forbidden and not cluster.rejected


def test_an_end_acts_only_on_the_rollout_it_read(cluster, setup):
    """A promote and the canary's watchdog can judge the same rollout at once: whichever
    ends second must not take down a rollout started since (here an abort and a new
    shadow came between), and the delete names the uid of the challenger it means."""
    from visionline.serving.rollout.local import RolloutChanged

    ro = KubernetesRollout(setup["cfg"], setup["store"], api_client=cluster.api_client())
    ro.start(ModelRef("digits", "2"), "canary", 10)
    read_then = ro.state()
    assert read_then["uid"] == _get(cluster, "Deployment", CHALLENGER)["metadata"]["uid"]
    ro.end("abort", "an operator")
    started = ro.start(ModelRef("digits", "2"), "shadow", 50)
    now = ro.state()
    assert now["uid"] == started["uid"] != read_then["uid"]

    with pytest.raises(RolloutChanged, match="no longer the one in progress"):
        ro.end("rollback", "judged on the canary", expected=read_then)
    assert ro.state() == now  # the shadow runs on, its front still mounted
    assert _front(_get(cluster, "Deployment", CHAMPION)["spec"]["template"])

    # a promote and a watchdog's rollback of that one rollout, at the same moment: the
    # claim (an annotation written at the resourceVersion read) lets exactly one through
    ended, refused = end_at_once(
        {
            action: KubernetesRollout(setup["cfg"], setup["store"], api_client=cluster.api_client())
            for action in ("promote", "rollback")
        },
        now,
    )
    assert len(ended) == 1 and len(refused) == 1, refused  # refused: changed, or gone
    assert ro.state() is None
    deletes = [
        body
        for method, path, body in cluster.requests()
        if method == "DELETE" and path.endswith(f"/deployments/{CHALLENGER}")
    ]
    assert [d["preconditions"]["uid"] for d in deletes] == [read_then["uid"], now["uid"]]
    assert not cluster.forbidden and not cluster.rejected


def test_an_operator_abort_takes_over_a_rollout_whose_ender_died(cluster, setup):
    """A promote that claimed the rollout and died leaves it marked: a watchdog leaves it
    alone, and `visionline rollout abort` (no state read before) still ends it."""
    from visionline.serving.rollout.local import RolloutChanged
    from visionline.serving.rollout.watch import check_once

    ro = KubernetesRollout(setup["cfg"], setup["store"], api_client=cluster.api_client())
    ro.start(ModelRef("digits", "2"), "canary", 10)
    state = ro._claim("promote", ro.state())  # ... and the promote dies here
    assert ro.state()["ending"]["action"] == "promote"
    with pytest.raises(RolloutChanged, match="already being ended \\(promote since"):
        ro.end("rollback", "judged", expected=state)
    assert check_once(ro) is None
    assert ro.end("abort", "an operator")["outcome"] == "abort"
    assert ro.state() is None and _get(cluster, "Deployment", CHALLENGER) is None
    assert _front(_get(cluster, "Deployment", CHAMPION)["spec"]["template"]) is None
    assert not cluster.forbidden and not cluster.rejected


def test_a_leftover_challenger_service_is_not_adopted(cluster, setup):
    """A Service of the challenger's name that no running challenger owns (orphaned by
    a delete with --cascade=orphan) would be left behind, or taken by the garbage
    collector from under the new challenger: the start refuses, names it and what to do,
    and leaves nothing of its own behind."""
    from kubernetes import client

    from visionline.serving.kubernetes.challenger import ROLLOUT, challenger_service

    core = client.CoreV1Api(cluster.admin_client())
    core.create_namespaced_service(NS, challenger_service(setup["cfg"]))
    before = _get(cluster, "Deployment", CHAMPION)
    ro = KubernetesRollout(setup["cfg"], setup["store"], api_client=cluster.api_client())
    with pytest.raises(ServingError, match=f"Service {NS}/{CHALLENGER} already exists") as e:
        ro.start(ModelRef("digits", "2"), "shadow", 50)
    assert f"kubectl -n {NS} delete service {CHALLENGER}" in str(e.value)
    assert _get(cluster, "Deployment", CHALLENGER) is None
    assert _get(cluster, "Service", CHALLENGER) is not None  # not ours to delete
    assert _get(cluster, "Deployment", CHAMPION)["spec"]["template"] == before["spec"]["template"]

    core.delete_namespaced_service(CHALLENGER, NS)
    state = ro.start(ModelRef("digits", "2"), "shadow", 50)
    owners = _get(cluster, "Service", CHALLENGER)["metadata"]["ownerReferences"]
    assert [o["uid"] for o in owners] == [state["uid"]]
    ro.end("abort", "test")
    assert _get(cluster, "Service", CHALLENGER) is None

    # a Deployment of the challenger's name that runs no rollout: named, left alone
    ro.start(ModelRef("digits", "2"), "shadow", 50)
    client.AppsV1Api(cluster.admin_client()).patch_namespaced_deployment(
        CHALLENGER, NS, {"metadata": {"annotations": {ROLLOUT: None}}}
    )
    with pytest.raises(ServingError, match="exists but runs no rollout"):
        ro.start(ModelRef("digits", "2"), "canary", 10)
    assert _get(cluster, "Deployment", CHALLENGER) is not None
    assert not cluster.forbidden and not cluster.rejected
