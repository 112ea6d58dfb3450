"""A rolling update of the serving Deployment under steady load loses no request (issue
#18, defect 3), on the strict test cluster: the Deployment rolls through ReplicaSets
(maxSurge, maxUnavailable, probes; replicasets.py), and every pod runs for real, in its
own network namespace, with the real init container, TorchServe and the nginx front as
processes under the kubelet's termination sequence (preStop, SIGTERM, grace, SIGKILL;
servingpods.py). Eight clients send predictions through the Service as kube-proxy
routes them, seeing each endpoint removal two seconds late; every failure is counted.

To see it fail as the objects were before the fix (TorchServe SIGTERMed at once, nginx
only sleeping before its fast shutdown): VISIONLINE_TEST_OLD_TERMINATION=1."""

from __future__ import annotations

import collections
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO
from tests.support.k8s import Cluster
from tests.support.k8s.replicasets import RolloutController
from tests.support.k8s.servingpods import Endpoints, ServingKubelet
from visionline.config import load_config
from visionline.registry import ModelRef, Registry
from visionline.serving.kubernetes import KubernetesDeployer, build_objects
from visionline.serving.nginx import new_token
from visionline.storage import LocalStore

pytestmark = [
    pytest.mark.torchserve,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="each pod's own network namespace needs root"),
]
NS = "vl-rollout"
CLIENTS = 8
LAG = 2.0  # how late kube-proxy sees an endpoint removal (less than drain_seconds)


def _cfg():
    cfg = load_config(REPO / "configs" / "digits.yaml")
    return cfg.with_overrides(
        **{
            "deploy.target": "kubernetes",
            "deploy.kubernetes.namespace": NS,
            "deploy.kubernetes.replicas": 2,
            "deploy.kubernetes.s3_secret": None,
            "deploy.kubernetes.poll_seconds": 0.2,
            "deploy.kubernetes.rollout_timeout_seconds": 240,
            "deploy.kubernetes.startup_seconds": 180,
            "deploy.kubernetes.pull_allowance_seconds": 30,
            "deploy.kubernetes.drain_seconds": 4,
            "deploy.kubernetes.inflight_seconds": 5,
            "deploy.kubernetes.termination_grace_period_seconds": 15,
        }
    )


@pytest.fixture
def store_root():
    """Outside /tmp and /work: the pods' kubelet moves those paths (their mounts) to each
    pod's own directories wherever the pod names them, the store's path included."""
    root = Path(tempfile.mkdtemp(prefix="vl-rollout-", dir="/var/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _two_versions(packaged, root):
    """Versions 1 and 2 of the packaged archive in a store of this test's own."""
    src, ref, _ = packaged
    store = LocalStore(root / "store")
    reg = Registry(store, ref.name)
    info = Registry(src, ref.name).info(ref.version)
    for v in ("1", "2"):
        store.put_bytes(ModelRef(ref.name, v).mar_key, src.get_bytes(ref.mar_key))
        reg.register(v, {k: info[k] for k in info if k not in ("name", "version")})
    reg.promote("1", "fixture")
    image = src.get_bytes(src.get_json(f"{ref.prefix}/model.json")["parity_keys"][0])
    return store, info["sha256"], image


def _old_termination(dep, k):
    """The pod as it was before the fix: TorchServe without preStop, nginx only sleeping."""
    for c in dep["spec"]["template"]["spec"]["containers"]:
        if c["name"] == "torchserve":
            c.pop("lifecycle", None)
        else:
            c["lifecycle"] = {"preStop": {"sleep": {"seconds": k.drain_seconds}}}


class Load:
    """``CLIENTS`` threads predicting through the endpoints, counting every outcome."""

    def __init__(self, endpoints, image, token):
        self.endpoints, self.image = endpoints, image
        self.headers = {"Authorization": f"Bearer {token}"}
        self.outcomes = collections.Counter()
        self.failures = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]

    def _one(self):
        sandbox = self.endpoints.pick()
        if sandbox is None:
            return "no endpoint"
        url = "http://127.0.0.1:8080/predictions/digits"
        try:
            r = sandbox.call(
                lambda: requests.post(url, data=self.image, headers=self.headers, timeout=30)
            )
        except Exception as e:
            return f"error {type(e).__name__}: {str(e)[:120]}"
        return (
            "ok"
            if r.status_code == 200
            else f"HTTP {r.status_code}: {' '.join(r.text.split())[:80]}"
        )

    def _client(self):
        while not self.stop.is_set():
            outcome = self._one()
            self.outcomes["ok" if outcome == "ok" else "failed"] += 1
            if outcome != "ok":
                self.failures.append((time.monotonic(), outcome))
                time.sleep(0.05)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def _wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_rolling_update_under_load_loses_no_request(packaged_digits, store_root):
    from kubernetes import client

    cfg = _cfg()
    k = cfg.deploy.kubernetes
    store, sha256, image = _two_versions(packaged_digits, store_root)
    token = new_token()
    with Cluster() as cluster:
        api = cluster.admin_client()  # the operator applies; the pipeline's account deploys
        core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        core.create_namespaced_secret(
            NS,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": k.credential_secret, "namespace": NS},
                "stringData": {token: "load test"},
            },
        )
        cm, dep, svc = build_objects(cfg, store.uri, ModelRef("digits", "1"), sha256)
        if os.environ.get("VISIONLINE_TEST_OLD_TERMINATION"):
            _old_termination(dep, k)
        controller = RolloutController(cluster, NS)
        # a short path: TorchServe's worker sockets live under each pod's /tmp
        kubelet = ServingKubelet(cluster, NS, store_root / "node")
        endpoints = Endpoints(kubelet, svc["spec"]["selector"], LAG)
        for part in (controller, kubelet, endpoints):
            part.start()
        try:
            core.create_namespaced_config_map(NS, cm)
            apps.create_namespaced_deployment(NS, dep)
            core.create_namespaced_service(NS, svc)
            deployer = KubernetesDeployer(cfg, store, api_client=cluster.api_client())
            deployer.wait_rollout()
            _wait(lambda: len(endpoints.current) == 2, 30, "two endpoints")
            old = set(kubelet.workers)
            with Load(endpoints, image, token) as load:
                _wait(lambda: load.outcomes["ok"] >= 20, 60, "the load to run")
                started = time.monotonic()
                deployer.deploy(ModelRef("digits", "2"))
                _wait(lambda: all(not kubelet.workers[n].is_alive() for n in old), 60, "old pods")
                time.sleep(LAG + 1)
            took = time.monotonic() - started
            print(
                f"\nrolling update under load from {CLIENTS} clients, {took:.0f}s: "
                f"{load.outcomes['ok']} requests answered, {load.outcomes['failed']} failed"
            )
            for when, what in load.failures[:20]:
                print(f"  +{when - started:.1f}s {what}")
            assert load.outcomes["failed"] == 0, collections.Counter(w for _, w in load.failures)
            assert load.outcomes["ok"] >= 100
            _check_rollout(controller, kubelet, old, k)
            assert not controller.errors and not kubelet.errors, (controller.errors, kubelet.errors)
        finally:
            endpoints.close()
            kubelet.close()
            controller.close()


def _check_rollout(controller, kubelet, old, k):
    """The surge bound held, the old pods went as the termination sequence says: the
    front quit first, TorchServe got SIGTERM after it, nothing needed SIGKILL."""
    busy = [(pods, avail) for _, pods, avail in controller.history if pods]
    assert max(p for p, _ in busy) <= 3  # replicas + maxSurge
    ev = collections.defaultdict(dict)
    for when, pod, container, what in kubelet.events:
        ev[(pod, container)].setdefault(what.split(" (")[0], when)
    for pod in old:
        front, ts = ev[(pod, "auth-proxy")], ev[(pod, "torchserve")]
        assert "SIGKILL" not in front and "SIGKILL" not in ts, (front, ts)
        assert ts["SIGTERM"] >= front["exited"], (front, ts)
        assert ts["SIGTERM"] - ts["preStop"] >= k.drain_seconds + k.inflight_seconds - 0.5
