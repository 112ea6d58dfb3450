"""Training as a Kubernetes Job, against an API server over HTTP (kmock's emulator with
the API-server semantics in tests/support/k8s/) and the official client.

The test plays the Job controller and the kubelet (``JobController``): it creates the
pods our Job asks for, applies the failure policy we posted, and either runs the pod's
command for real (the trainer, on moto S3, with its credentials resolved from the
Secret the Job references) or gives the pod the fate a real cluster would.
"""

from __future__ import annotations

import json
import logging
import re

import pytest

from tests.conftest import digits_config
from tests.support.k8s import Cluster, Fate, JobController, job_from_requests
from tests.support.waiting import until
from visionline.compute import config_key
from visionline.compute.kubernetes import KubernetesBackend, job_name
from visionline.data.ingest import ingest
from visionline.data.manifest import DatasetRef
from visionline.errors import TrainingError
from visionline.kube import KubernetesPermissionError
from visionline.storage import S3Store
from visionline.training.plan import plan_run

NS = "vl-test"
SECRET_VALUE = "vl-test-secret-7f3a9c"  # must never appear in anything we send


@pytest.fixture
def cluster():
    with Cluster() as c:
        yield c


@pytest.fixture
def s3_store(s3_client, bucket):
    """An empty bucket: enough for runs whose pods never train."""
    return S3Store(f"s3://{bucket}/artifacts", client=s3_client)


@pytest.fixture
def s3_digits(small_digits_dir, s3_store):
    ingest(s3_store, str(small_digits_dir), "digits", progress=False)
    return s3_store


def _plan(store, moto_url, device: str = "auto", **kube):
    cfg = digits_config(
        store.uri,
        **{
            "train.device": device,
            "data.cache_dir": ".visionline/cache",
            "train.epochs": 2,
            "train.batch_size": 16,
            "train.log_every": 1,
            "train.early_stopping": None,
            "compute.backend": "kubernetes",
            "compute.kubernetes.namespace": NS,
            "compute.kubernetes.image": "visionline-trainer:test",
            "compute.kubernetes.poll_seconds": 0.2,
            "compute.kubernetes.env": {
                "AWS_ENDPOINT_URL": moto_url,
                "AWS_DEFAULT_REGION": "us-east-1",
            },
            **{f"compute.kubernetes.{k}": v for k, v in kube.items()},
        },
    )
    if store.exists("datasets/digits/LATEST"):
        return plan_run(cfg, store)
    # pods that never train need no data: any pinned version will do
    return plan_run(cfg, store, dataset=DatasetRef("digits", "0123456789ab"))


def _secret(cluster):
    from kubernetes import client

    client.CoreV1Api(cluster.admin_client()).create_namespaced_secret(
        NS,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "visionline-s3", "namespace": NS},
            "type": "Opaque",
            "stringData": {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": SECRET_VALUE},
        },
    )


@pytest.fixture
def controller(cluster, tmp_path):
    made = []

    def make(fates=None, hold=False):
        c = JobController(cluster, NS, fates=fates, workdir=tmp_path / "node", hold=hold)
        made.append(c)
        c.start()
        return c

    yield make
    for c in made:
        c.close()
        assert not c.errors, c.errors


@pytest.mark.slow
def test_succeeding_job_completes_the_run(cluster, controller, s3_digits, moto_server, caplog):
    _secret(cluster)
    # the Job asks for a GPU; this node has none, so the trainer is told to use the CPU
    # (with `auto` it would refuse, exit 78: a GPU pod that cannot use CUDA, defect 6)
    plan = _plan(s3_digits, moto_server, device="cpu", gpus=1)
    kubelet = controller()
    backend = KubernetesBackend(plan.cfg, api_client=cluster.api_client())
    with caplog.at_level(logging.INFO, logger="visionline"):
        handle = backend.submit(plan, s3_digits, origin={"flow_run": "fr-1"})
        handle.wait(timeout=300)
    assert handle.poll() == "succeeded" and handle.failure is None
    info = s3_digits.get_json(f"runs/{plan.run_id}/run.json")
    assert info["epochs_run"] == 2 and info["config_fingerprint"] == plan.cfg.fingerprint()
    assert info["origin"] == {"flow_run": "fr-1"}

    # what we posted: the GPU request, the failure policy, labels, and no secret value
    job = job_from_requests(cluster)
    assert (
        job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
        == "1"
    )
    assert job["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [78]
    assert job["metadata"]["labels"]["visionline.io/run-id"] == plan.run_id
    sent = [r for r in cluster.requests() if not r[1].endswith("/secrets")]  # but our own setup
    assert sent and SECRET_VALUE not in json.dumps(sent)
    assert not cluster.rejected  # every object we wrote validated (1.31, strict)
    # the trainer really got its credentials from the Secret: it read and wrote S3
    pod = next(iter(kubelet.pod_fates))
    streamed = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"[{pod}]")]
    assert any("epoch 2/2" in m for m in streamed), streamed[-10:]
    assert not any(
        re.search(r"epoch \d+ step \d+/\d+ loss", m) for m in streamed
    )  # per-batch lines stay out


@pytest.mark.slow
def test_evicted_pods_replacement_resumes_from_the_checkpoint(
    cluster, controller, s3_digits, moto_server, caplog
):
    _secret(cluster)
    # backoffLimit 0: the eviction must not count as a failure (the DisruptionTarget rule)
    plan = _plan(s3_digits, moto_server, backoff_limit=0, termination_grace_period_seconds=30)
    plan = plan_run(
        plan.cfg.with_overrides(**{"train.batch_size": 4, "train.epochs": 3}), s3_digits
    )
    kubelet = controller([Fate("evict", evict_after="epoch 1 step 3/"), Fate("run")])
    backend = KubernetesBackend(plan.cfg, api_client=cluster.api_client())
    with caplog.at_level(logging.INFO, logger="visionline"):
        handle = backend.submit(plan, s3_digits)
        handle.wait(timeout=600)
    first, second = kubelet.pod_fates
    assert kubelet.grace_exits[first] < 30  # SIGTERM -> checkpoint -> exit, within the grace
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"pod {first} was evicted" in m for m in messages)
    stopped = [m for m in messages if m.startswith(f"[{first}]") and "stopped on SIGTERM" in m]
    resumed = [m for m in messages if m.startswith(f"[{second}]") and "resuming run" in m]
    assert stopped and resumed, messages[-30:]
    info = s3_digits.get_json(f"runs/{plan.run_id}/run.json")
    assert info["epochs_run"] == 3 and info["resumed_from"] in (1, 2, 3)


def test_failing_pod_is_reported_with_its_reason(cluster, controller, s3_store, moto_server):
    # what k8s/base's Role grants: jobs, pods, pods/log; not jobs/status
    cluster.deny("get", "jobs/status")
    plan = _plan(s3_store, moto_server, backoff_limit=1)
    lines = ["epoch 1 step 1/9 loss 2.3", "allocating activations"]
    controller([Fate("oom", lines=lines), Fate("oom", lines=lines)])
    handle = KubernetesBackend(plan.cfg, api_client=cluster.api_client()).submit(plan, s3_store)
    with pytest.raises(TrainingError) as e:
        handle.wait(timeout=60)
    text = str(e.value)
    assert "OOMKilled" in text and "limits.memory" in text and "8Gi" in text
    assert "backoffLimit=1" in text
    assert "allocating activations" in text  # the pod's last log lines


@pytest.mark.slow
def test_config_error_fails_at_once(cluster, controller, s3_store, moto_server):
    plan = _plan(s3_store, moto_server, backoff_limit=5)
    _secret(cluster)
    kubelet = controller(hold=True)
    handle = KubernetesBackend(plan.cfg, api_client=cluster.api_client()).submit(plan, s3_store)
    # the config the pod will read turns out broken: the real trainer exits 78
    s3_store.put_bytes(
        config_key(plan.cfg), b"name: x\ndata: {dataset: digits}\ntrain: {lr: 0.1, bogus: 1}\n"
    )
    kubelet.released.set()
    with pytest.raises(TrainingError, match=r"rejected its configuration \(exit 78\)") as e:
        handle.wait(timeout=300)
    assert "train.bogus: unknown key" in str(e.value)  # the pod's log tail
    assert len(kubelet.pod_fates) == 1  # no retry: the failure policy failed the Job at once


@pytest.mark.parametrize(
    ("fate", "kube", "words"),
    [
        (
            "image_pull",
            {"image_pull_timeout_seconds": 0.5},
            ["cannot pull image visionline-trainer:test", "ImagePullBackOff"],
        ),
        (
            "unschedulable",
            {"gpus": 2, "unschedulable_timeout_seconds": 0.5},
            ["Insufficient nvidia.com/gpu", "no node has 2 free nvidia.com/gpu"],
        ),
    ],
)
def test_pod_that_cannot_start_is_reported_and_its_job_deleted(
    cluster, controller, s3_store, moto_server, fate, kube, words
):
    plan = _plan(s3_store, moto_server, **kube)
    controller([Fate(fate)])
    handle = KubernetesBackend(plan.cfg, api_client=cluster.api_client()).submit(plan, s3_store)
    with pytest.raises(TrainingError) as e:
        handle.wait(timeout=60)
    for w in words:
        assert w in str(e.value)
    assert ("jobs", job_name(plan.run_id), "Foreground") in cluster.deletions


def test_cancel_deletes_the_job_and_its_pods(cluster, controller, s3_store, moto_server):
    from kubernetes import client

    plan = _plan(s3_store, moto_server)
    kubelet = controller([Fate("image_pull")])  # a pod that stays, so there is one to delete
    handle = KubernetesBackend(plan.cfg, api_client=cluster.api_client()).submit(plan, s3_store)
    core = client.CoreV1Api(cluster.admin_client())
    selector = f"batch.kubernetes.io/job-name={job_name(plan.run_id)}"
    for _ in range(100):
        if core.list_namespaced_pod(NS, label_selector=selector).items:
            break
        kubelet.stop_event.wait(0.1)
    assert core.list_namespaced_pod(NS, label_selector=selector).items
    handle.cancel()
    assert handle.poll() == "failed" and "cancelled" in handle.failure
    # deleted with a propagation policy that takes the pods (the API's default orphans them)
    assert ("jobs", job_name(plan.run_id), "Foreground") in cluster.deletions
    # in the foreground: the Job goes once its pod has stopped (the kubelet confirms it)
    batch = client.BatchV1Api(cluster.admin_client())
    until("the Job to go", lambda: not batch.list_namespaced_job(NS).items, 10)
    assert not core.list_namespaced_pod(NS, label_selector=selector).items


@pytest.mark.slow
def test_resubmit_right_after_cancel_waits_for_the_job_to_go(
    cluster, controller, s3_digits, moto_server, caplog
):
    from kubernetes import client

    _secret(cluster)
    plan = _plan(s3_digits, moto_server)
    # the first pod takes seconds to stop once deleted (a slow shutdown), so the
    # cancelled Job lingers in foreground deletion while the run is submitted again
    kubelet = controller([Fate("image_pull", stop_seconds=3), Fate("run")])
    backend = KubernetesBackend(plan.cfg, api_client=cluster.api_client())
    name = job_name(plan.run_id)
    batch, core = (
        client.BatchV1Api(cluster.admin_client()),
        client.CoreV1Api(cluster.admin_client()),
    )
    first = backend.submit(plan, s3_digits)
    selector = f"batch.kubernetes.io/job-name={name}"
    until("the pod", lambda: core.list_namespaced_pod(NS, label_selector=selector).items, 10)
    old_uid = batch.read_namespaced_job(name, NS).metadata.uid
    first.cancel()
    assert batch.read_namespaced_job(name, NS).metadata.deletion_timestamp is not None
    with caplog.at_level(logging.INFO, logger="visionline"):
        second = backend.submit(plan, s3_digits)
        second.wait(timeout=300)  # before the fix: "Job ... is gone"
    assert second.poll() == "succeeded" and second.failure is None
    assert batch.read_namespaced_job(name, NS).metadata.uid != old_uid  # created anew
    assert any("still being deleted" in r.getMessage() for r in caplog.records)
    old_pod, _ = kubelet.pod_fates
    # the resubmit came while the old pod lingered (409), and created the Job anew
    # only once the kubelet had confirmed that pod's end
    sent = [(m, p) for m, p, _ in cluster.requests() if m in ("POST", "DELETE")]
    confirmed = sent.index(("DELETE", f"/api/v1/namespaces/{NS}/pods/{old_pod}"))
    jobs = f"/apis/batch/v1/namespaces/{NS}/jobs"
    posted = [i for i, r in enumerate(sent) if r == ("POST", jobs)]
    assert len(posted) == 3 and posted[1] < confirmed < posted[2]


def test_resubmit_gives_up_on_a_job_stuck_in_deletion(cluster, controller, s3_store, moto_server):
    from kubernetes import client

    plan = _plan(s3_store, moto_server)
    controller([Fate("image_pull", stop_seconds=60)])  # a pod that will not stop soon
    backend = KubernetesBackend(plan.cfg, api_client=cluster.api_client())
    handle = backend.submit(plan, s3_store)
    name = job_name(plan.run_id)
    core = client.CoreV1Api(cluster.admin_client())
    selector = f"batch.kubernetes.io/job-name={name}"
    until("the pod", lambda: core.list_namespaced_pod(NS, label_selector=selector).items, 10)
    handle.cancel()
    backend.deletion_timeout = 1.0
    with pytest.raises(TrainingError) as e:
        backend.submit(plan, s3_store)
    text = str(e.value)
    for words in (f"Job {NS}/{name} is still being deleted", "get pods", "--force", "again"):
        assert words in text


def test_multi_node_service_is_collected_with_its_job(cluster, controller, s3_store, moto_server):
    from kubernetes import client

    plan = _plan(s3_store, moto_server, nodes=2)
    controller([Fate("image_pull"), Fate("image_pull")])
    KubernetesBackend(plan.cfg, api_client=cluster.api_client()).submit(plan, s3_store)
    assert not cluster.rejected
    name = job_name(plan.run_id)
    batch, core = (
        client.BatchV1Api(cluster.admin_client()),
        client.CoreV1Api(cluster.admin_client()),
    )
    job = batch.read_namespaced_job(name, NS)
    [ref] = core.read_namespaced_service(name, NS).metadata.owner_references
    assert (ref.kind, ref.name, ref.uid) == ("Job", name, job.metadata.uid)
    # as `kubectl delete job` does it: the Job at once, its dependents after it
    batch.delete_namespaced_job(name, NS, propagation_policy="Background")
    until("the Service to go", lambda: not core.list_namespaced_service(NS).items, 10)


def test_rbac_refusal_names_verb_resource_namespace_and_role(cluster, s3_store, moto_server):
    plan = _plan(s3_store, moto_server)
    cluster.deny("create", "jobs")
    backend = KubernetesBackend(plan.cfg, api_client=cluster.api_client())
    with pytest.raises(KubernetesPermissionError) as e:
        backend.submit(plan, s3_store)
    text = str(e.value)
    for words in ("create", "jobs", f"namespace {NS}", "visionline-pipeline", "cannot create"):
        assert words in text
    assert isinstance(e.value.__cause__, Exception)  # wrapped once, cause kept
