"""Training on this machine: the same entry point a Kubernetes pod runs, in ``nproc``
processes (torchrun), or in this process when a run needs only one."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from types import FrameType

from visionline.compute import FAILED, SUCCEEDED, publish_config, trainer_args
from visionline.errors import Preempted, TrainingError
from visionline.storage import ArtifactStore
from visionline.training.plan import RunPlan

log = logging.getLogger(__name__)
# Runs a plan to completion in the calling process (visionline.training's fit, handed in by
# visionline.backends: compute sits below training and must not import it).
TrainHere = Callable[[RunPlan, ArtifactStore, dict[str, str] | None], object]
_STEP_LINE = re.compile(r"\bepoch \d+ step \d+/\d+ loss ")


class LocalRun:
    """A trainer subprocess; its output is relayed to this process's log."""

    def __init__(self, run_id: str, cmd: list[str], env: dict[str, str]) -> None:
        self.run_id = run_id
        self.failure: str | None = None
        self._tail: deque[str] = deque(maxlen=40)
        self._cancelled = False
        self._stopped = False  # SIGTERM passed on: the trainer checkpoints and exits
        log.info("launching: %s", " ".join(cmd))
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        # relayed from a thread that carries the caller's context (a flow's run context
        # among it), so the lines land in the same run's log
        self._relay = threading.Thread(
            target=contextvars.copy_context().run,
            args=(self._read,),
            daemon=True,
            name=f"train-{run_id}",
        )
        self._relay.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip()
            self._tail.append(line)
            if not _STEP_LINE.search(line):  # per-batch lines stay in the child's log level
                log.info("[train %s] %s", self.run_id, line)

    def poll(self) -> str | None:
        rc = self.proc.poll()
        if rc is None:
            return None
        self._relay.join(timeout=5)
        if rc == 0:
            return SUCCEEDED
        if self.failure is None:
            why = "cancelled" if self._cancelled else f"exited with {rc}"
            self.failure = f"training run {self.run_id} {why}:\n" + "\n".join(self._tail)
        return FAILED

    def wait(self, timeout: float | None = None) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired as e:
            raise TrainingError(f"training run {self.run_id} still running after {timeout}s") from e
        if self.poll() == FAILED:
            if self._stopped:
                raise Preempted(f"run {self.run_id} stopped on SIGTERM")
            raise TrainingError(self.failure or f"training run {self.run_id} failed")

    def stop(self) -> None:
        """Pass SIGTERM on: the trainer checkpoints at the next batch and exits; ``wait``
        then raises Preempted (the same plan submitted again resumes it)."""
        if self.proc.poll() is None:
            self._stopped = True
            self.proc.terminate()

    def cancel(self) -> None:
        if self.proc.poll() is None:
            self._cancelled = True
            self.proc.terminate()  # the trainer checkpoints and exits on SIGTERM
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._relay.join(timeout=5)


@contextlib.contextmanager
def _sigterm_to(run: LocalRun) -> Iterator[None]:
    """While waiting for ``run``, SIGTERM to this process stops the trainer the way it
    stops a pod's, instead of leaving it running without us. Python delivers signals to
    the main thread only; elsewhere SIGTERM keeps its default meaning."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def forward(signum: int, frame: FrameType | None) -> None:
        run.stop()

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class LocalBackend:
    """``submit`` always starts trainer processes: ``nproc`` of them under torchrun, or
    one. ``train`` runs a one-process plan in this process when given ``train_here``:
    its log, its SIGTERM handling (checkpoint, then Preempted) and its reuse of a
    finished run are then the caller's, without starting an interpreter and torch again."""

    def __init__(
        self,
        python: str = sys.executable,
        nproc: int = 1,
        env: dict[str, str] | None = None,
        train_here: TrainHere | None = None,
    ) -> None:
        self.python = python
        self.nproc = nproc
        self.env = env
        self.train_here = train_here

    def command(
        self,
        config_uri: str,
        store_uri: str,
        run_id: str,
        origin: dict[str, str] | None = None,
    ) -> list[str]:
        entry = ["-m", "visionline.training", *trainer_args(config_uri, run_id, store_uri, origin)]
        if self.nproc > 1:
            return [
                self.python,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={self.nproc}",
                *entry,
            ]
        return [self.python, *entry]

    def submit(
        self, plan: RunPlan, store: ArtifactStore, origin: dict[str, str] | None = None
    ) -> LocalRun:
        cmd = self.command(publish_config(plan.cfg, store), store.uri, plan.run_id, origin)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(self.env or {})}
        return LocalRun(plan.run_id, cmd, env)

    def train(
        self, plan: RunPlan, store: ArtifactStore, origin: dict[str, str] | None = None
    ) -> None:
        if self.nproc == 1 and self.train_here is not None:
            self.train_here(plan, store, origin)
            return
        run = self.submit(plan, store, origin)
        with _sigterm_to(run):
            run.wait()
