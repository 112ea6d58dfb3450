"""Training in a local subprocess: the same entry point a Kubernetes pod runs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections import deque

from visionline.compute import publish_config
from visionline.config import PipelineConfig
from visionline.errors import TrainingError
from visionline.storage import ArtifactStore

log = logging.getLogger(__name__)


class LocalBackend:
    def __init__(
        self, python: str = sys.executable, nproc: int = 1, env: dict[str, str] | None = None
    ) -> None:
        self.python = python
        self.nproc = nproc
        self.env = env

    def command(self, config_uri: str, store_uri: str, run_id: str) -> list[str]:
        entry = [
            "-m",
            "visionline.training",
            "--config",
            config_uri,
            "--run-id",
            run_id,
            "--store",
            store_uri,
        ]
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

    def train(self, cfg: PipelineConfig, store: ArtifactStore, run_id: str) -> None:
        cmd = self.command(publish_config(cfg, store), store.uri, run_id)
        log.info("launching: %s", " ".join(cmd))
        tail: deque[str] = deque(maxlen=40)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(self.env or {})}
        with subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip()
                tail.append(line)
                if " step " not in line:  # per-batch lines stay in the child's own log level
                    log.info("[train %s] %s", run_id, line)
            rc = proc.wait()
        if rc != 0:
            raise TrainingError(f"training run {run_id} exited with {rc}:\n" + "\n".join(tail))
