"""`visionline train` goes through the compute backend the config names: with
``compute.nproc: 2`` two trainer processes train the run (torchrun, gloo), as the flows'
training does; a second `train` recognises the finished run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, digits_config
from visionline.data.ingest import ingest
from visionline.model.runs import RunPaths
from visionline.storage import LocalStore

pytestmark = pytest.mark.slow


def test_train_with_nproc_2_runs_two_trainer_processes(small_digits_dir, tmp_path):
    store = LocalStore(tmp_path / "store")
    ingest(store, str(small_digits_dir), "digits", progress=False)
    cfg = digits_config(store.uri, **{"train.epochs": 1, "compute.nproc": 2})
    config = tmp_path / "cfg.yaml"
    config.write_text(cfg.to_yaml())
    # one thread per process, over loopback: the two ranks share this small machine
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}

    command = [sys.executable, "-m", "visionline.cli", "--config", str(config), "train"]

    def train() -> subprocess.CompletedProcess:
        return subprocess.run(
            [*command, "--run-id", "two"],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
            cwd=REPO,
        )

    first = train()
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    assert first.stdout.startswith("run two: trained 1 epochs; best epoch 1 (")
    info = store.get_json(RunPaths("two").run_info)
    assert info["world_size"] == 2 and info["epochs_run"] == 1
    assert "torch.distributed.run --standalone --nproc_per_node=2" in first.stderr

    again = train()
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.startswith("run two: already complete; best epoch 1 (")
