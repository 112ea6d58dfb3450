"""The strict test cluster's Deployment rollout (replicasets.py, servingpods.py) with a
small real pod (Python's http.server, ready when its page answers): the bounds of
``maxSurge``/``maxUnavailable`` hold through a rollout (the GPU strategy: no pod beyond
the replicas, one unavailable at most), and a rollout whose pods never become ready
ends in ``ProgressDeadlineExceeded``, which the serving deployer reports."""

from __future__ import annotations

import copy
import os
import time

import pytest

from tests.support.k8s import Cluster
from tests.support.k8s.replicasets import RolloutController
from tests.support.k8s.servingpods import ServingKubelet

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="each pod's own network namespace needs root"
)
NS = "vl-rs"
LABELS = {"app.kubernetes.io/name": "web"}


def _deployment(surge: int, unavailable: int, deadline: int = 60) -> dict:
    web = {
        "name": "web",
        "image": "python",
        "command": ["python", "-m", "http.server", "8080", "--bind", "127.0.0.1"],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {
            "replicas": 2,
            "progressDeadlineSeconds": deadline,
            "selector": {"matchLabels": LABELS},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable},
            },
            "template": {
                "metadata": {"labels": LABELS},
                "spec": {"terminationGracePeriodSeconds": 5, "containers": [web]},
            },
        },
    }


@pytest.fixture
def cluster(tmp_path):
    with Cluster() as c:
        controller = RolloutController(c, NS)
        kubelet = ServingKubelet(c, NS, tmp_path)
        controller.start()
        kubelet.start()
        try:
            yield c, controller
        finally:
            kubelet.close()
            controller.close()
        assert not controller.errors and not kubelet.errors, (controller.errors, kubelet.errors)


def _read(api):
    from kubernetes import client

    return api.sanitize_for_serialization(
        client.AppsV1Api(api).read_namespaced_deployment("web", NS)
    )


def _rolled_out(api) -> bool:
    d = _read(api)
    s = d.get("status") or {}
    return (
        s.get("observedGeneration") == d["metadata"]["generation"]
        and s.get("updatedReplicas") == s.get("availableReplicas") == s.get("replicas") == 2
    )


def _wait(predicate, timeout=90):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_a_gpu_style_rollout_never_needs_a_spare_replica(cluster):
    from kubernetes import client

    c, controller = cluster
    api = c.admin_client()
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(NS, _deployment(surge=0, unavailable=1))
    _wait(lambda: _rolled_out(api))
    start = time.monotonic()
    apps.patch_namespaced_deployment(
        "web",
        NS,
        {"spec": {"template": {"metadata": {"annotations": {"rev": "2"}}}}},
        _content_type="application/merge-patch+json",
    )
    time.sleep(0.5)
    _wait(lambda: _rolled_out(api))
    during = [(pods, avail) for t, pods, avail in controller.history if t > start]
    assert max(p for p, _ in during) == 2  # never a third pod: no spare GPU needed
    assert min(a for _, a in during) == 1  # one replica serves throughout
    sets = client.AppsV1Api(api).list_namespaced_replica_set(NS).items
    assert sorted(rs.spec.replicas for rs in sets) == [0, 2]


def test_a_rollout_that_never_becomes_ready_exceeds_its_progress_deadline(cluster):
    from kubernetes import client

    from visionline.serving.kubernetes.deployer import _rollout_state

    c, _ = cluster
    api = c.admin_client()
    apps = client.AppsV1Api(api)
    dep = _deployment(surge=1, unavailable=0, deadline=4)
    apps.create_namespaced_deployment(NS, dep)
    _wait(lambda: _rolled_out(api))
    broken = copy.deepcopy(dep["spec"]["template"])
    broken["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] = "/missing"
    apps.patch_namespaced_deployment(
        "web", NS, {"spec": {"template": broken}}, _content_type="application/merge-patch+json"
    )
    _wait(lambda: "progress deadline exceeded" in _rollout_state(_read(api))[1], timeout=60)
    status = _read(api)["status"]
    assert status["availableReplicas"] == 2  # the old replicas still serve (maxUnavailable 0)
    assert status["replicas"] == 3  # and the one surge pod that never got ready stays
