"""Training in a local subprocess: the same entry point a Kubernetes pod runs."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
from collections import deque

from visionline.compute import FAILED, SUCCEEDED, publish_config, trainer_args
from visionline.errors import TrainingError
from visionline.storage import ArtifactStore
from visionline.training.plan import RunPlan

log = logging.getLogger(__name__)
_STEP_LINE = re.compile(r"\bepoch \d+ step \d+/\d+ loss ")


class LocalRun:
    """A trainer subprocess; its output is relayed to this process's log."""

    def __init__(self, run_id: str, cmd: list[str], env: dict[str, str]) -> None:
        self.run_id = run_id
        self.failure: str | None = None
        self._tail: deque[str] = deque(maxlen=40)
        self._cancelled = False
        log.info("launching: %s", " ".join(cmd))
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self._relay = threading.Thread(target=self._read, daemon=True, name=f"train-{run_id}")
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
            raise TrainingError(self.failure or f"training run {self.run_id} failed")

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


class LocalBackend:
    def __init__(
        self, python: str = sys.executable, nproc: int = 1, env: dict[str, str] | None = None
    ) -> None:
        self.python = python
        self.nproc = nproc
        self.env = env

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
        self.submit(plan, store, origin).wait()
