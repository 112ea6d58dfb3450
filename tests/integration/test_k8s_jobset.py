"""Multi-node training as a JobSet (issue 18, defect 2: ``compute.kubernetes.kind: jobset``).

The test cluster runs the JobSet controller as v0.8 does (tests/support/k8s/jobsets.py:
the JobSet's Job ``<jobset>-node-0`` labelled as the real controller labels it, its
headless Service, the success and failure policies, a restart recreating the Job) and
the Job controller runs that Indexed Job's pods at once, each with the hostname
``<jobset>-node-0-<index>`` and the subdomain's names in its ``/etc/hosts``. The pipeline
talks to it as the pipeline's service account, with the Role as the component
k8s/components/jobset leaves it: it creates the JobSet, watches it to its end, relays its
pods' logs, reports a failure in the words the Job path uses, and deletes it on cancel.
"""

from __future__ import annotations

import logging

import pytest
from kubernetes import client

from tests.integration import test_k8s_training as training
from tests.support.k8s import Cluster, Fate, JobController, JobSetController
from tests.support.k8s.jobset_crd import GROUP, PLURAL, VERSION
from tests.support.k8s.rbac import shipped
from tests.support.s3 import free_port
from tests.support.waiting import until
from visionline.compute.kubernetes import KubernetesBackend
from visionline.compute.kubernetes.jobset import jobset_name
from visionline.compute.kubernetes.owner import OWNER_JOB_NAME, OWNER_JOB_UID
from visionline.errors import ConfigError, TrainingError
from visionline.kube import KubernetesPermissionError
from visionline.training.plan import plan_run

NS = training.NS
s3_store, s3_digits = training.s3_store, training.s3_digits
LABEL = "jobset.sigs.k8s.io/jobset-name"


@pytest.fixture
def cluster():
    with Cluster(rbac=shipped(("jobset",))) as c:
        yield c


@pytest.fixture
def controllers(cluster, tmp_path):
    """Start the JobSet and Job controllers, the Job controller's pods given ``fates``."""
    made = []

    def make(fates=None):
        jobsets = JobSetController(cluster, NS)
        jobs = JobController(cluster, NS, fates=fates, workdir=tmp_path / "node")
        made.extend([jobsets, jobs])
        jobsets.start()
        jobs.start()
        return jobsets, jobs

    yield make
    for c in made:
        c.close()
        assert not c.errors, c.errors


def _plan(store, moto_server, **kube):
    return training._plan(
        store, moto_server, nodes=2, kind="jobset", rendezvous_port=free_port(), **kube
    )


def _jobset(cluster, name):
    api = client.CustomObjectsApi(cluster.admin_client())
    return api.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)


def _left(cluster, name) -> list[str]:
    """Every object of the JobSet ``name`` still there: itself, its Jobs, pods, Service."""
    admin = cluster.admin_client()
    core, batch = client.CoreV1Api(admin), client.BatchV1Api(admin)
    custom = client.CustomObjectsApi(admin)
    selector = f"{LABEL}={name}"
    found = [
        o["metadata"]["name"]
        for o in custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"]
        if o["metadata"]["name"] == name
    ]
    found += [j.metadata.name for j in batch.list_namespaced_job(NS, label_selector=selector).items]
    found += [p.metadata.name for p in core.list_namespaced_pod(NS, label_selector=selector).items]
    found += [
        s.metadata.name for s in core.list_namespaced_service(NS).items if s.metadata.name == name
    ]
    return found


@pytest.mark.slow
def test_two_node_jobset_trains_to_completion(cluster, controllers, s3_digits, moto_server, caplog):
    training._secret(cluster)
    plan = _plan(s3_digits, moto_server, backoff_limit=0, termination_grace_period_seconds=20)
    cfg = plan.cfg.with_overrides(
        **{"train.device": "cpu", "train.epochs": 1, "compute.group_timeout_seconds": 30}
    )
    plan = plan_run(cfg, s3_digits, dataset=plan.dataset)
    jobsets, jobs = controllers()
    backend = KubernetesBackend(plan.cfg, api_client=cluster.api_client())
    with caplog.at_level(logging.INFO, logger="visionline"):
        # before: ConfigError "the pipeline does not submit JobSets yet"
        handle = backend.submit(plan, s3_digits, origin={"flow_run": "fr-1"})
        handle.wait(timeout=300)
    assert handle.poll() == "succeeded", handle.failure
    name = jobset_name(plan.run_id)
    assert handle.name == name
    info = s3_digits.get_json(f"runs/{plan.run_id}/run.json")
    assert info["world_size"] == 2 and info["epochs_run"] == 1
    assert info["origin"] == {"flow_run": "fr-1"}

    js = _jobset(cluster, name)
    assert [c["reason"] for c in js["status"]["conditions"]] == ["AllJobsCompleted"]
    assert js["metadata"]["labels"]["visionline.io/run-id"] == plan.run_id
    # one Job, run as the Job path runs its Indexed Job: both pods at once, JobSet's names
    assert jobsets.created == [f"{name}-node-0"]
    pods = sorted(jobs.pod_fates)
    assert [p.rsplit("-", 1)[0] for p in pods] == [f"{name}-node-0-0", f"{name}-node-0-1"]
    svc = client.CoreV1Api(cluster.admin_client()).read_namespaced_service(name, NS)
    assert svc.spec.cluster_ip == "None" and svc.spec.selector == {LABEL: name}
    assert not cluster.rejected  # the JobSet and everything made of it validated
    assert not cluster.forbidden  # the pipeline's Role with the component sufficed
    messages = [r.getMessage() for r in caplog.records]
    for pod in pods:  # both pods' logs relayed, as for a Job's
        assert any(m.startswith(f"[{pod}]") for m in messages), (pod, messages[-20:])
    assert any(f"JobSet {name} completed" in m for m in messages)


@pytest.mark.parametrize(
    ("code", "restarts", "words"),
    [
        # the trainer fails on both nodes: the Job fails (its indexes out of retries), the
        # JobSet restarts the whole group once (maxRestarts = backoff_limit = 1), then fails
        (1, 1, ["failed again after 1 restart(s)", "maxRestarts=1", "FailedIndexes"]),
        # a configuration error (exit 78) fails the Job by its podFailurePolicy, and the
        # JobSet's rule ends it without a restart
        (78, 0, ["no restart can fix", "rejected its configuration (exit 78)"]),
    ],
)
def test_a_failing_trainer_fails_the_jobset_with_its_reason(
    cluster, controllers, s3_store, moto_server, code, restarts, words
):
    plan = _plan(s3_store, moto_server, backoff_limit=1)
    lines = ["epoch 1 step 1/9 loss 2.3", f"the last word before exit {code}"]
    jobsets, _ = controllers([Fate("exit", exit_code=code, lines=lines) for _ in range(12)])
    handle = KubernetesBackend(plan.cfg, api_client=cluster.api_client()).submit(plan, s3_store)
    with pytest.raises(TrainingError) as e:
        handle.wait(timeout=60)
    name = jobset_name(plan.run_id)
    text = str(e.value)
    assert f"training run {plan.run_id} (JobSet {NS}/{name}) failed" in text
    assert f"Job {NS}/{name}-node-0 failed" in text
    for w in words:
        assert w in text, text
    assert f"the last word before exit {code}" in text  # the pod's log tail
    js = _jobset(cluster, name)
    assert js["status"].get("restarts", 0) == restarts
    assert jobsets.created == [f"{name}-node-0"] * (restarts + 1)


def test_cancel_deletes_the_jobset_its_job_pods_and_service(
    cluster, controllers, s3_store, moto_server
):
    plan = _plan(s3_store, moto_server)
    controllers([Fate(kind="hold", stop_seconds=1.0), Fate(kind="hold", stop_seconds=1.0)])
    handle = KubernetesBackend(plan.cfg, api_client=cluster.api_client()).submit(plan, s3_store)
    name = handle.name
    core = client.CoreV1Api(cluster.admin_client())
    until(
        "both pods to run",
        lambda: (
            len(
                [
                    p
                    for p in core.list_namespaced_pod(NS, label_selector=f"{LABEL}={name}").items
                    if p.status and p.status.phase == "Running"
                ]
            )
            == 2
        ),
    )
    handle.cancel()
    assert ("jobsets", name, "Foreground") in cluster.deletions  # its Jobs and pods first
    # still there while its pods stop, then nothing of it is left
    assert _jobset(cluster, name)["metadata"].get("deletionTimestamp")
    until("the JobSet and everything of it to go", lambda: not _left(cluster, name))
    with pytest.raises(TrainingError, match=r"cancelled \(JobSet .* deleted\)"):
        handle.wait(timeout=5)


def test_a_flow_run_killed_outright_takes_its_jobset_along(
    cluster, controllers, s3_store, moto_server, monkeypatch
):
    """The JobSet is owned by the flow run's Job, as the training Job is on the Job path."""
    batch = client.BatchV1Api(cluster.admin_client())
    flow = batch.create_namespaced_job(
        NS,
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "retrain-x7k2p", "namespace": NS},
            "spec": {  # suspended: the Job controller leaves it alone
                "suspend": True,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "prefect-job", "image": "x"}],
                    }
                },
            },
        },
    )
    monkeypatch.setenv(OWNER_JOB_NAME, flow.metadata.name)
    monkeypatch.setenv(OWNER_JOB_UID, flow.metadata.uid)
    plan = _plan(s3_store, moto_server)
    controllers([Fate(kind="hold"), Fate(kind="hold")])
    handle = KubernetesBackend(plan.cfg, api_client=cluster.api_client()).submit(plan, s3_store)
    name = handle.name
    assert _jobset(cluster, name)["metadata"]["ownerReferences"][0]["uid"] == flow.metadata.uid
    until("the JobSet's pods", lambda: len(_left(cluster, name)) == 5)  # +Job, 2 pods, Service
    batch.delete_namespaced_job(flow.metadata.name, NS, propagation_policy="Foreground")
    until("the JobSet and everything of it to go", lambda: not _left(cluster, name))


def test_without_the_jobset_controller_submit_says_to_install_it(cluster, s3_store, moto_server):
    plan = _plan(s3_store, moto_server)
    backend = KubernetesBackend(plan.cfg, api_client=cluster.api_client())
    with pytest.raises(ConfigError, match=r"no JobSet API .*install the JobSet controller"):
        backend.submit(plan, s3_store)


def test_without_the_rbac_component_submit_names_it(s3_store, moto_server):
    with Cluster() as plain:  # the overlay as shipped, without k8s/components/jobset
        jobsets = JobSetController(plain, NS)
        plan = _plan(s3_store, moto_server)
        backend = KubernetesBackend(plan.cfg, api_client=plain.api_client())
        with pytest.raises(KubernetesPermissionError, match=r"k8s/components/jobset"):
            backend.submit(plan, s3_store)
        assert plain.forbidden[0][1:3] == ("create", "jobsets")
        assert not jobsets.is_alive()  # installed the API only
