"""Deletion in the test cluster (tests/support/k8s/gc.py) as a real API server and its
garbage collector do it: foreground deletion keeps the owner visible until its blocking
dependents are gone, background deletion and ownerReferences collect the dependents
after the owner, orphaning strips the references, a pod on a node goes gracefully, and
every DELETED event carries the deleted object's own body."""

from __future__ import annotations

import threading

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tests.support.k8s import Cluster

NS = "vl-test"


@pytest.fixture
def cluster():
    with Cluster() as c:
        yield c


@pytest.fixture
def apis(cluster):
    api = cluster.admin_client()
    return client.BatchV1Api(api), client.CoreV1Api(api)


def _job(batch, name):
    body = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "busybox", "command": ["true"]}],
                }
            }
        },
    }
    return batch.create_namespaced_job(NS, body)


def _ref(owner, block):
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": owner.metadata.name,
        "uid": owner.metadata.uid,
        "blockOwnerDeletion": block,
    }


def _pod(core, name, owner, node=True):
    spec = {"containers": [{"name": "c", "image": "busybox"}], "restartPolicy": "Never"}
    if node:
        spec["nodeName"] = "node-1"  # bound: a kubelet must stop it
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "ownerReferences": [_ref(owner, True)]},
        "spec": spec,
    }
    return core.create_namespaced_pod(NS, body)


def _config_map(core, name, owner_uid, owner_name="j"):
    ref = {"apiVersion": "batch/v1", "kind": "Job", "name": owner_name, "uid": owner_uid}
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": NS, "ownerReferences": [ref]},
        "data": {"k": "v"},
    }
    return core.create_namespaced_config_map(NS, body)


def _gone(read, name):
    try:
        read(name, NS)
    except ApiException as e:
        return e.status == 404
    return False


def test_foreground_deletion_keeps_the_owner_until_its_blocking_dependents_are_gone(apis):
    batch, core = apis
    job = _job(batch, "j")
    _pod(core, "p", job)
    _config_map(core, "cm", job.metadata.uid)  # a dependent that does not block
    batch.delete_namespaced_job("j", NS, propagation_policy="Foreground")

    held = batch.read_namespaced_job("j", NS)
    assert held.metadata.deletion_timestamp is not None
    assert held.metadata.finalizers == ["foregroundDeletion"]
    pod = core.read_namespaced_pod("p", NS)  # on a node: its kubelet has to stop it first
    assert pod.metadata.deletion_timestamp is not None
    assert pod.metadata.deletion_grace_period_seconds == 30
    assert _gone(core.read_namespaced_config_map, "cm")  # deleted, not waited for

    # the kubelet confirms the pod has stopped: then, and only then, the Job goes
    core.delete_namespaced_pod("p", NS, grace_period_seconds=0)
    assert _gone(core.read_namespaced_pod, "p")
    assert _gone(batch.read_namespaced_job, "j")


def test_background_orphan_and_garbage_collection_of_owner_references(apis):
    batch, core = apis
    job = _job(batch, "j")
    _pod(core, "p", job, node=False)  # not on a node: deleted at once
    _config_map(core, "cm", job.metadata.uid)
    batch.delete_namespaced_job("j", NS, propagation_policy="Background")
    assert _gone(batch.read_namespaced_job, "j")
    assert _gone(core.read_namespaced_pod, "p") and _gone(core.read_namespaced_config_map, "cm")

    # an object naming an owner that does not exist is collected
    _config_map(core, "stray", "0b7c2e5e-0000-4000-8000-000000000000", "never-was")
    assert _gone(core.read_namespaced_config_map, "stray")

    # Orphan (batch/v1's default for Jobs): the dependent stays, without its reference
    job = _job(batch, "j2")
    _config_map(core, "kept", job.metadata.uid, "j2")
    batch.delete_namespaced_job("j2", NS)
    assert _gone(batch.read_namespaced_job, "j2")
    assert core.read_namespaced_config_map("kept", NS).metadata.owner_references is None


def test_a_deleted_dependents_watch_event_carries_its_own_body(apis):
    batch, core = apis
    job = _job(batch, "j")
    _config_map(core, "cm", job.metadata.uid)
    events: list[tuple[str, str, str]] = []
    watching = threading.Event()
    w = watch.Watch()

    def follow():
        for ev in w.stream(core.list_namespaced_config_map, NS):
            watching.set()  # the ADDED event of the ConfigMap already there
            obj = ev["object"]
            events.append((ev["type"], obj.kind, obj.metadata.name))
            if ev["type"] == "DELETED":
                w.stop()

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    assert watching.wait(10)
    batch.delete_namespaced_job("j", NS, propagation_policy="Foreground")
    t.join(timeout=10)
    assert events[-1] == ("DELETED", "ConfigMap", "cm"), events
