"""What ties a training Job to its flow run (issue 18, defect 4): the ownerReference read
from the flow-run pod's downward API, never across namespaces, and the flows' cancel hook
stopping every training run the process waits for."""

from __future__ import annotations

import logging

import pytest

from tests.support.k8s import validate
from tests.support.manifests import which
from tests.unit import test_flow_run_api_key
from tests.unit.test_k8s_jobs import RUN, STORE, URI, _cfg
from visionline.compute import cancel_waited_runs, waiting_for
from visionline.compute.kubernetes import build_manifests
from visionline.compute.kubernetes.owner import flow_run_owner

POD = {
    "VISIONLINE_OWNER_NAMESPACE": "visionline",
    "VISIONLINE_OWNER_POD_NAME": "retrain-x7k2p-abcde",
    "VISIONLINE_OWNER_POD_UID": "6f1c0a52-0000-4000-8000-000000000001",
}
JOB = {
    "VISIONLINE_OWNER_JOB_NAME": "retrain-x7k2p",
    "VISIONLINE_OWNER_JOB_UID": "6f1c0a52-0000-4000-8000-000000000002",
}


def test_the_flow_runs_job_owns_the_training_job():
    owner = flow_run_owner("visionline", {**POD, **JOB})
    assert owner == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": "retrain-x7k2p",
        "uid": "6f1c0a52-0000-4000-8000-000000000002",
    }
    [job] = build_manifests(_cfg(), RUN, URI, STORE, owner=owner)
    validate(job)
    assert job["metadata"]["ownerReferences"] == [owner]  # no blockOwnerDeletion
    # a pod without its Job's labels (the downward API gives ""): the pod owns it
    pod_only = flow_run_owner("visionline", {**POD, "VISIONLINE_OWNER_JOB_NAME": ""})
    assert pod_only is not None and pod_only["kind"] == "Pod"
    assert pod_only["uid"] == POD["VISIONLINE_OWNER_POD_UID"]


def test_no_owner_outside_a_pod_nor_across_namespaces(caplog):
    assert flow_run_owner("visionline", {}) is None
    [job] = build_manifests(_cfg(), RUN, URI, STORE, owner=None)
    assert "ownerReferences" not in job["metadata"]
    with caplog.at_level(logging.WARNING):
        # an owner elsewhere would be taken for gone: the GC would delete the Job at once
        assert flow_run_owner("training", {**POD, **JOB}) is None
    assert "owners must share the namespace" in caplog.text


def test_the_cancel_hook_cancels_the_runs_being_waited_for():
    from flows.tasks import cancel_training

    class Run:
        def __init__(self, run_id):
            self.run_id, self.cancelled = run_id, 0

        def cancel(self):
            self.cancelled += 1

    waited, done = Run("a"), Run("b")
    with waiting_for(done):
        pass
    with waiting_for(waited):
        cancel_training(None, None, None)
    assert (waited.cancelled, done.cancelled) == (1, 0)
    assert cancel_waited_runs() == []


worker_container = test_flow_run_api_key.worker_container  # the fixture


@pytest.mark.skipif(which("kubectl") is None, reason="kubectl not found: run `make tools`")
def test_the_workers_flow_run_job_knows_its_own_job_and_pod(monkeypatch, worker_container):
    """The work pool's template gives the flow-run container its own Job and pod through
    the downward API, beside the env the worker adds (the API key's reference)."""
    job = test_flow_run_api_key._flow_run_job(monkeypatch, worker_container["env"])
    validate(job)
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    paths = {
        n: (e.get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath") for n, e in env.items()
    }
    assert (
        paths["VISIONLINE_OWNER_JOB_UID"] == "metadata.labels['batch.kubernetes.io/controller-uid']"
    )
    assert paths["VISIONLINE_OWNER_JOB_NAME"] == "metadata.labels['batch.kubernetes.io/job-name']"
    assert paths["VISIONLINE_OWNER_POD_UID"] == "metadata.uid"
    assert paths["VISIONLINE_OWNER_NAMESPACE"] == "metadata.namespace"
    assert "PREFECT_API_KEY" in env  # the worker's own env is still there
