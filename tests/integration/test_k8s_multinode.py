"""A multi-node group survives one lost node (issue 18, defect 2).

Two nodes (gloo on CPU, one trainer process each) train as an Indexed Job in the test
cluster: both pods start at once, each with its own hostname, loopback address and an
``/etc/hosts`` that resolves the headless Service's names (tests/support/k8s/indexed.py),
under torchrun's elastic c10d rendezvous on the first pod. Mid-epoch the second node's
pod is evicted: its trainer checkpoints with the group at the next step and stops, the
survivor's worker stops too (within the configured group timeout) while its pod stays,
the Job replaces the evicted pod for its index, the replacement rejoins the rendezvous
and the whole group resumes from the checkpoint. With ``backoffLimitPerIndex: 0`` no pod
may fail in a way that counts: the static rendezvous of before failed the survivor's
pod, which failed the run. The final weights equal an uninterrupted two-process run's.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch

from tests.integration import test_k8s_training as training
from tests.support.k8s import JobController
from tests.support.s3 import free_port
from visionline.compute.kubernetes import KubernetesBackend, job_name
from visionline.compute.local import LocalBackend
from visionline.model.runs import RunPaths, load_torch
from visionline.training.plan import plan_run

cluster, s3_store, s3_digits = training.cluster, training.s3_store, training.s3_digits
GROUP_TIMEOUT = 20  # compute.group_timeout_seconds: the bound on a survivor's wait
GRACE = 20  # the pods' terminationGracePeriodSeconds


@pytest.fixture
def controller(cluster, tmp_path):
    c = JobController(cluster, training.NS, workdir=tmp_path / "node")
    yield c
    c.close()
    assert not c.errors, c.errors


def _lines(cluster, pod: str) -> list[str]:
    return cluster.call(
        lambda: [line for _, line in cluster.server.logs.get((training.NS, pod), _NoLog).lines]
    )


class _NoLog:
    lines: list = []


class _Evictor(threading.Thread):
    """Evicts the running pod of index 1 once any pod logged ``at``, and records when
    each pod first logged each of ``marks`` (monotonic seconds)."""

    def __init__(
        self, cluster, ctl: JobController, job: str, at: str, marks: tuple[str, ...]
    ) -> None:
        super().__init__(daemon=True)
        self.cluster, self.ctl, self.job, self.at, self.marks = cluster, ctl, job, at, marks
        self.evicted: str | None = None
        self.evicted_at = 0.0
        self.seen: dict[tuple[str, str], float] = {}
        self.stop = threading.Event()
        self.keep: tuple | None = None  # (store, run prefix, copy's prefix): the checkpoint
        self.kept: str | None = None  # the step checkpoint the group resumed from, copied

    def _keep_checkpoint(self) -> None:
        """Copy the mid-epoch checkpoint before the run prunes it: the reference run
        resumes from it."""
        store, src, dst = self.keep
        for key in store.list(f"{src}/checkpoints/"):
            if "-step-" in key:
                self.kept = key.replace(src, dst, 1)
                store.put_bytes(self.kept, store.get_bytes(key))

    def run(self) -> None:
        while not self.stop.is_set():
            pods = list(self.ctl.procs)
            for pod in pods:
                lines = _lines(self.cluster, pod)
                for mark in self.marks:
                    if (pod, mark) not in self.seen and any(mark in x for x in lines):
                        self.seen[pod, mark] = time.monotonic()
                if self.evicted is None and any(self.at in x for x in lines):
                    victim = next(p for p in pods if p.startswith(f"{self.job}-1-"))
                    self.evicted, self.evicted_at = victim, time.monotonic()
                    self.ctl.kubelet.evict(victim, GRACE)
            if self.evicted and self.keep and not self.kept:
                self._keep_checkpoint()
            self.stop.wait(0.1)


@pytest.mark.slow
def test_two_node_group_resumes_as_a_whole_after_one_node_is_evicted(
    cluster, controller, s3_digits, moto_server, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # the reference run's data cache
    training._secret(cluster)
    plan = training._plan(
        s3_digits,
        moto_server,
        nodes=2,
        backoff_limit=0,  # per index: an eviction must cost no retry, nor may the survivor
        termination_grace_period_seconds=GRACE,
        rendezvous_port=free_port(),
        max_restarts=2,
    )
    cfg = plan.cfg.with_overrides(
        **{
            "train.batch_size": 2,
            "compute.group_timeout_seconds": GROUP_TIMEOUT,
            # one intra-op thread in the pods and in the reference run alike (torchrun
            # sets it so only with more than one process per node): float sums then add
            # up in the same order, so weights can be compared bit for bit
            "compute.threads": 1,
        }
    )
    plan = plan_run(cfg, s3_digits, dataset=plan.dataset)
    name = job_name(plan.run_id)
    # the survivor's agent reports its worker's end (at the default log level)
    stopped, setting_up = "failed (exitcode:", "setting up"
    evictor = _Evictor(cluster, controller, name, "epoch 1 step 2/", (stopped, setting_up))
    ref_id = f"{plan.run_id}-ref"
    evictor.keep = (s3_digits, RunPaths(plan.run_id).prefix, RunPaths(ref_id).prefix)
    controller.start()
    evictor.start()
    started = time.monotonic()
    handle = KubernetesBackend(plan.cfg, api_client=cluster.api_client()).submit(plan, s3_digits)
    try:
        handle.wait(timeout=240)  # before the fix: the survivor's pod failed, so did the Job
    finally:
        evictor.stop.set()
    took = time.monotonic() - started
    assert handle.poll() == "succeeded", handle.failure
    pods = list(controller.pod_fates)
    first, second, replacement = (
        next(p for p in pods if p.startswith(f"{name}-0-")),
        evictor.evicted,
        next(p for p in pods if p.startswith(f"{name}-1-") and p != evictor.evicted),
    )
    assert len(pods) == 3  # the survivor's pod stayed: only the evicted one was replaced
    # the evicted pod stopped within its grace; the survivor's worker stopped within the
    # group timeout of the eviction (its pod kept) and was restarted in the same pod,
    # with the replacement, from the checkpoint
    assert controller.grace_exits[second] < GRACE
    assert evictor.seen[first, stopped] - evictor.evicted_at < GROUP_TIMEOUT
    survivor_log = _lines(cluster, first)
    assert sum(setting_up in x for x in survivor_log) == 2, survivor_log[-30:]
    assert any(setting_up in x for x in _lines(cluster, replacement))
    everything = survivor_log + _lines(cluster, replacement)
    assert any("resuming run" in x for x in everything), everything[-30:]
    info = s3_digits.get_json(f"runs/{plan.run_id}/run.json")
    assert info["world_size"] == 2 and info["resumed_from"] in (1, 2)
    assert info["epochs_run"] == plan.cfg.train.epochs

    # the same weights as an uninterrupted two-process run resumed from that checkpoint
    assert evictor.kept, "no mid-epoch checkpoint was written"
    ref = plan_run(plan.cfg, s3_digits, dataset=plan.dataset, run_id=ref_id)
    env = {
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    LocalBackend(nproc=2, env=env).train(ref, s3_digits)
    got = load_torch(s3_digits, RunPaths(plan.run_id).model)
    want = load_torch(s3_digits, RunPaths(ref.run_id).model)
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key
    print(f"two-node run with one eviction: {took:.1f}s")
