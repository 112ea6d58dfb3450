"""A cancelled flow run leaves no Job or pod of its training run (issue 18, defect 4).

The flow-run pod runs in the test cluster as the Prefect worker's Job would run it: a
Job whose container has the work pool template's env (its own pod and Job through the
downward API), running the pipeline's ``train`` task body (tests/support/flow_run_pod.py)
against the cluster's API. Its training Job's pod is held Running (no trainer: what is
tested is who deletes it). Cancelling is done both ways a real cluster does it: politely
(SIGTERM to the flow's process, which must delete the training Job itself) and outright
(the flow's process SIGKILLed, then its Job deleted as the worker deletes it on cancel:
the training Job's ownerReference must let the garbage collector take it)."""

from __future__ import annotations

import json
import signal
import time

import pytest
import yaml
from kubernetes import client

from tests.conftest import digits_config
from tests.support.k8s import Cluster, Fate, JobController
from tests.support.k8s.rbac import PIPELINE, token
from tests.support.manifests import REPO
from tests.support.waiting import until
from visionline.errors import EXIT_PREEMPTED
from visionline.storage import S3Store

NS = "vl-test"
FLOW_JOB = "retrain-x7k2p"
DATASET = "digits:0123456789ab"  # the held training pod never reads it


def _template_env() -> list[dict]:
    """The flow-run container's env as the work pool's template sets it."""
    template = json.loads((REPO / "k8s" / "prefect" / "base-job-template.json").read_text())
    env = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    env = env["containers"][0]["env"]
    assert isinstance(env, list), f"the template's container env is {env!r}, not a list"
    return env


def _kubeconfig(path, url):
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "test", "cluster": {"server": url}}],
                # the flow-run pod's code runs as the pipeline's service account
                "users": [{"name": "test", "user": {"token": token(PIPELINE)}}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
                "current-context": "test",
            }
        )
    )


def _flow_run_job(config_path, kubeconfig, moto_url) -> dict:
    env = [
        *_template_env(),
        {"name": "KUBECONFIG", "value": str(kubeconfig)},
        # as the trainer image sets PYTHONPATH=/app, where flows/ lives
        {"name": "PYTHONPATH", "value": str(REPO)},
        {"name": "AWS_ENDPOINT_URL", "value": moto_url},
        {"name": "AWS_ACCESS_KEY_ID", "value": "testing"},
        {"name": "AWS_SECRET_ACCESS_KEY", "value": "testing"},
        {"name": "AWS_DEFAULT_REGION", "value": "us-east-1"},
    ]
    container = {
        "name": "prefect-job",
        "image": "visionline-trainer:test",
        "command": ["python", "-m", "tests.support.flow_run_pod", str(config_path), DATASET],
        "env": env,
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": FLOW_JOB, "namespace": NS},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 30,
                    "containers": [container],
                }
            },
        },
    }


@pytest.fixture
def flow_run(tmp_path, s3_client, bucket, moto_server):
    """(cluster, controller, flow-run pod name, training Job name) once the flow run's
    training pod runs."""
    store = S3Store(f"s3://{bucket}/artifacts", client=s3_client)
    cfg = digits_config(
        store.uri,
        **{
            "compute.backend": "kubernetes",
            "compute.kubernetes.namespace": NS,
            "compute.kubernetes.image": "visionline-trainer:test",
            "compute.kubernetes.poll_seconds": 0.2,
        },
    )
    config_path = tmp_path / "config.yaml"
    config_path.write_text(cfg.to_yaml())
    with Cluster() as cluster:
        kubeconfig = tmp_path / "kubeconfig"
        _kubeconfig(kubeconfig, cluster.url)
        controller = JobController(
            cluster, NS, fates=[Fate(), Fate(kind="hold")], workdir=tmp_path / "node"
        )
        controller.start()
        try:
            batch = client.BatchV1Api(cluster.admin_client())
            batch.create_namespaced_job(NS, _flow_run_job(config_path, kubeconfig, moto_server))
            flow_pod = until("the flow-run pod", lambda: controller.pods(FLOW_JOB))[0]
            training = until(
                "the training Job",
                lambda: [j for j in controller.jobs() if j["metadata"]["name"] != FLOW_JOB],
            )[0]["metadata"]["name"]
            until(
                "the training pod to run",
                lambda: [
                    p
                    for p in controller.pods(training)
                    if p.get("status", {}).get("phase") == "Running"
                ],
            )
            time.sleep(1.0)  # the flow's process is in its wait loop
            yield cluster, controller, flow_pod["metadata"]["name"], training
        finally:
            controller.close()
            assert not controller.errors, controller.errors


def _training_left(controller, training) -> list[str]:
    jobs = [j["metadata"]["name"] for j in controller.jobs() if j["metadata"]["name"] == training]
    return jobs + [p["metadata"]["name"] for p in controller.pods(training)]


def _log(cluster, pod) -> str:
    core = client.CoreV1Api(cluster.admin_client())
    return core.read_namespaced_pod_log(pod, NS)


@pytest.mark.slow
def test_sigterm_to_the_flow_run_deletes_its_training_job(flow_run):
    cluster, controller, flow_pod, training = flow_run
    controller.kubelet.kill(flow_pod, signal.SIGTERM)  # a polite cancel reaches the pod
    proc = controller.procs[flow_pod]
    assert proc.wait(timeout=30) == EXIT_PREEMPTED, _log(cluster, flow_pod)
    # the flow's own process deleted it: its Job is still there, nobody else did
    assert [j["metadata"]["name"] for j in controller.jobs() if j["metadata"]["name"] == FLOW_JOB]
    until("the training Job and its pods to go", lambda: not _training_left(controller, training))
    assert ("jobs", training, "Foreground") in cluster.deletions  # its pods first
    assert "cancelling it" in _log(cluster, flow_pod)


@pytest.mark.slow
def test_a_flow_run_killed_outright_takes_its_training_job_along(flow_run):
    cluster, controller, flow_pod, training = flow_run
    controller.kubelet.kill(flow_pod, signal.SIGKILL)  # nothing of it runs any more
    assert controller.procs[flow_pod].wait(timeout=30) == -signal.SIGKILL
    assert _training_left(controller, training)  # nobody has deleted it yet
    # Prefect's worker deletes the flow-run Job on cancel, as here; the TTL controller
    # would delete the failed one later
    batch = client.BatchV1Api(cluster.admin_client())
    batch.delete_namespaced_job(FLOW_JOB, NS, propagation_policy="Foreground")
    until("the training Job and its pods to go", lambda: not _training_left(controller, training))
    assert not [j for j in controller.jobs() if j["metadata"]["name"] == FLOW_JOB]
