"""Signals reach the trainer as they do in a pod (issue 18, defect 5).

The test cluster's kubelet runs each container as PID 1 of its own PID namespace under
the image's ENTRYPOINT from the Dockerfile (tests/support/k8s/runtime.py): the trainer's
Job sets ``args``, so tini is PID 1 and passes SIGTERM to the trainer alone (no ``-g``).
A trainer with DataLoader workers, evicted while it sets up, stops at once with
``EXIT_PREEMPTED``; evicted mid-epoch, it checkpoints and stops (its workers are not
killed under it); the next pod resumes and finishes the run."""

from __future__ import annotations

import logging

import pytest

from tests.integration import test_k8s_training as training
from tests.support.k8s import Fate, JobController, job_from_requests
from visionline.compute.kubernetes import KubernetesBackend, job_name
from visionline.errors import EXIT_PREEMPTED
from visionline.training.plan import plan_run

# the training tests' cluster and data
cluster, s3_store, s3_digits = training.cluster, training.s3_store, training.s3_digits


@pytest.fixture
def controller(cluster, tmp_path):
    made = []

    def make(fates):
        # TMPDIR as the pod's env sets it: DataLoader workers' sockets live there, and a
        # test's tmp_path would pass the 107 bytes of an AF_UNIX path
        c = JobController(
            cluster,
            training.NS,
            fates=fates,
            workdir=tmp_path / "node",
            extra_env={"TMPDIR": "/tmp"},
        )
        made.append(c)
        c.start()
        return c

    yield make
    for c in made:
        c.close()
        assert not c.errors, c.errors


def _exit_code(pod: dict) -> int | None:
    state = pod["status"]["containerStatuses"][0]["state"]
    return (state.get("terminated") or {}).get("exitCode")


@pytest.mark.slow
def test_trainer_under_tini_stops_in_setup_and_checkpoints_mid_epoch_with_workers(
    cluster, controller, s3_digits, moto_server, caplog
):
    training._secret(cluster)
    plan = training._plan(
        s3_digits, moto_server, backoff_limit=0, termination_grace_period_seconds=30
    )
    overrides = {"train.batch_size": 8, "train.epochs": 1, "train.num_workers": 2}
    plan = plan_run(plan.cfg.with_overrides(**overrides), s3_digits)
    fates = [
        Fate("evict", evict_after="setting up"),  # before any data is read
        Fate("evict", evict_after="epoch 1 step 3/"),  # mid-epoch, workers running
        Fate("run"),
    ]
    jobs = controller(fates)
    assert jobs.kubelet.pid1, "the kubelet runs containers as PID 1 (root and unshare needed)"
    backend = KubernetesBackend(plan.cfg, api_client=cluster.api_client())
    with caplog.at_level(logging.INFO, logger="visionline"):
        backend.submit(plan, s3_digits).wait(timeout=300)

    setup, mid, last = jobs.pod_fates
    pods = {p["metadata"]["name"]: p for p in jobs.pods(job_name(plan.run_id))}
    # Python as PID 1 with no handler yet drops the SIGTERM, and is SIGKILLed at the end
    # of the grace period
    assert _exit_code(pods[setup]) == EXIT_PREEMPTED
    assert jobs.grace_exits[setup] < 15  # at once, not at the grace period's SIGKILL
    container = job_from_requests(cluster)["spec"]["template"]["spec"]["containers"][0]
    assert "command" not in container  # the image's ENTRYPOINT (tini) stays PID 1
    assert _exit_code(pods[mid]) == EXIT_PREEMPTED
    assert jobs.grace_exits[mid] < 25
    messages = [r.getMessage() for r in caplog.records]
    of = {pod: [m for m in messages if m.startswith(f"[{pod}]")] for pod in (setup, mid, last)}
    assert any("during setup" in m for m in of[setup]), of[setup][-10:]
    assert any("stopped on SIGTERM at epoch 1" in m for m in of[mid]), of[mid][-10:]
    assert not any("DataLoader worker" in m for m in of[mid]), of[mid][-10:]
    assert any("resuming run" in m for m in of[last]), of[last][-10:]
    info = s3_digits.get_json(f"runs/{plan.run_id}/run.json")
    assert info["epochs_run"] == 1
