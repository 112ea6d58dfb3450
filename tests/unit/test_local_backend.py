"""LocalBackend decides where a local run trains: in this process for one process (when
given the trainer), else trainer processes; SIGTERM to us stops them as it stops a pod."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

from visionline.backends import compute_backend
from visionline.compute.local import LocalBackend, LocalRun, _sigterm_to
from visionline.config import DataConfig, PipelineConfig
from visionline.data.manifest import DatasetRef
from visionline.errors import EXIT_PREEMPTED, Preempted, TrainingError
from visionline.storage import LocalStore
from visionline.training.plan import RunPlan

# A trainer stand-in: says it is ready, and on SIGTERM exits as the trainer does.
TRAINER = (
    "import signal, sys, time\n"
    f"signal.signal(signal.SIGTERM, lambda *a: sys.exit({EXIT_PREEMPTED}))\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def _plan(nproc: int) -> RunPlan:
    cfg = PipelineConfig(data=DataConfig(dataset="d")).with_overrides(**{"compute.nproc": nproc})
    return RunPlan(cfg=cfg, run_id="r", dataset=DatasetRef("d", "1"))


def test_one_process_trains_here_more_start_torchrun(tmp_path):
    ran: list[str] = []
    store = LocalStore(tmp_path / "s")
    backend = LocalBackend(train_here=lambda plan, store, origin: ran.append(plan.run_id))
    backend.train(_plan(1), store)
    assert ran == ["r"]
    two = LocalBackend(nproc=2, train_here=lambda *a: ran.append("here"))
    cmd = two.command("cfg.yaml", store.uri, "r")
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    # two processes never train here: torchrun starts real trainers, which fail on a
    # dataset that is not in the store
    with pytest.raises(TrainingError):
        two.train(_plan(2), store)
    assert ran == ["r"]


def test_the_factory_gives_the_configured_nproc():
    backend = compute_backend(_plan(2).cfg)
    assert isinstance(backend, LocalBackend) and backend.nproc == 2


def test_sigterm_while_waiting_stops_the_trainer_and_raises_preempted():
    run = LocalRun("r", [sys.executable, "-c", TRAINER], dict(os.environ))

    def preempt_once_ready() -> None:  # as a kubelet would, once the trainer runs
        while "ready" not in run._tail and run.proc.poll() is None:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=preempt_once_ready, daemon=True).start()
    try:
        with _sigterm_to(run), pytest.raises(Preempted, match="run r stopped on SIGTERM"):
            run.wait(timeout=60)
    finally:
        run.cancel()
    assert run.proc.returncode == EXIT_PREEMPTED
    assert signal.getsignal(signal.SIGTERM) is before  # ours again after the wait


def test_a_trainer_failing_on_its_own_is_a_training_error():
    run = LocalRun("r", [sys.executable, "-c", "import sys; sys.exit(3)"], dict(os.environ))
    with _sigterm_to(run), pytest.raises(TrainingError, match="exited with 3") as e:
        run.wait(timeout=60)
    assert not isinstance(e.value, Preempted)
