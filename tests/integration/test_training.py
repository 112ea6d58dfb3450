"""The training loop with real data, real subprocesses, real signals."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, digits_config
from visionline.data.ingest import ingest
from visionline.model.runs import RunPaths
from visionline.storage import LocalStore
from visionline.training.loop import fit
from visionline.training.plan import plan_run

VENV_BIN = Path(sys.executable).parent
COMPARED = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr")


@pytest.fixture
def small_store(small_digits_dir, tmp_path):
    store = LocalStore(tmp_path / "store")
    ingest(store, str(small_digits_dir), "digits", progress=False)
    return store


def _write_cfg(path: Path, cfg) -> Path:
    path.write_text(cfg.to_yaml())
    return path


def test_outputs_of_a_finished_run(trained_digits):
    store, run_id, cfg, _ = trained_digits
    p = RunPaths(run_id)
    info = store.get_json(p.run_info)
    lines = [json.loads(x) for x in store.get_bytes(p.metrics).decode().splitlines()]
    assert len(lines) == info["epochs_run"] == cfg.train.epochs
    assert {
        "epoch",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "lr",
        "images_per_s",
        "seconds",
    } <= set(lines[0])
    assert lines[-1]["val_accuracy"] > 0.95
    assert (
        info["dataset_version"]
        and info["code_version"]
        # the config as the run plan pinned it (to the dataset version trained on)
        and info["config_fingerprint"] == plan_run(cfg, store, run_id=run_id).cfg.fingerprint()
    )
    ckpts = list(store.list(p.checkpoints))
    assert 1 <= len(ckpts) <= 2 and ckpts[-1].endswith(f"epoch-{cfg.train.epochs:04d}.pt")
    ckpt = torch.load(store.url(ckpts[-1]), weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "early_stopping", "config"} <= set(ckpt)
    assert store.exists(p.config) and store.exists(p.preprocessing) and store.exists(p.model)
    # the same call again recognises the finished run and does nothing
    assert fit(plan_run(cfg, store, run_id=run_id), store).already_complete


def _reference_and_trainer(data_dir, tmp_path, epochs: int, name: str):
    """An uninterrupted run ``run`` (the reference, in its own store), and the trainer
    command for the same run in a second store holding the same data."""
    overrides = {
        "train.epochs": epochs,
        "train.batch_size": 16,
        "train.log_every": 1,
        "train.early_stopping": None,
    }
    ref_store = LocalStore(tmp_path / "ref")
    ingest(ref_store, str(data_dir), "digits", progress=False)
    reference = fit(
        plan_run(digits_config(ref_store.uri, **overrides), ref_store, run_id="run"), ref_store
    )
    store = LocalStore(tmp_path / name)
    ingest(store, str(data_dir), "digits", progress=False)
    cfg_file = _write_cfg(tmp_path / "cfg.yaml", digits_config(store.uri, **overrides))
    cmd = [sys.executable, "-m", "visionline.training", "--config", str(cfg_file)]
    return reference, ref_store, store, [*cmd, "--run-id", "run"]


def _start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )


def test_resume_after_sigkill_matches_uninterrupted_run(small_digits_dir, tmp_path):
    reference, ref_store, store, cmd = _reference_and_trainer(
        small_digits_dir, tmp_path, epochs=4, name="killed"
    )
    proc = _start(cmd)
    seen = []
    deadline = time.monotonic() + 180
    for line in proc.stderr:
        seen.append(line)
        if "epoch 3 step 3/" in line:  # mid-epoch 3: epochs 1-2 are checkpointed
            proc.send_signal(signal.SIGKILL)
            break
        assert time.monotonic() < deadline, "".join(seen[-20:])
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-20:])
    p = RunPaths("run")
    assert not store.exists(p.run_info)
    assert list(store.list(p.checkpoints))[-1].endswith("epoch-0002.pt")

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming run run from" in rerun.stderr
    info = store.get_json(p.run_info)
    assert info["resumed_from"] == 3
    got = [{k: h[k] for k in COMPARED} for h in info["history"]]
    want = [{k: h[k] for k in COMPARED} for h in reference.history]
    assert got == want
    a = torch.load(store.url(p.model), weights_only=True)
    b = torch.load(ref_store.url(p.model), weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_stops_at_the_batch_boundary_and_the_resumed_run_is_exact(digits_dir, tmp_path):
    """A preempted pod: SIGTERM mid-epoch, the trainer finishes the batch in flight,
    checkpoints that step and exits within the grace period; started again it resumes
    at that step and ends with the uninterrupted run's weights, bit for bit."""
    from visionline.errors import EXIT_PREEMPTED

    grace_s = 30  # what a pod would get (terminationGracePeriodSeconds)
    reference, ref_store, store, cmd = _reference_and_trainer(
        digits_dir, tmp_path, epochs=2, name="preempted"
    )
    proc = _start(cmd)
    seen = []
    deadline = time.monotonic() + 300
    for line in proc.stderr:
        seen.append(line)
        if "epoch 2 step 5/" in line:  # early in epoch 2 (of about 80 steps)
            proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            break
        assert time.monotonic() < deadline, "".join(seen[-20:])
    rest = proc.communicate(timeout=grace_s)[1]
    took = time.monotonic() - signalled
    assert proc.returncode == EXIT_PREEMPTED, "".join(seen[-10:]) + rest
    assert took < grace_s
    stop = re.search(
        r"stopped on SIGTERM at epoch 2 step (\d+) \(signalled after epoch 2 step (\d+)\)", rest
    )
    assert stop, rest
    stopped, done = int(stop[1]), int(stop[2])
    # the batch in flight (if any) was finished, nothing more: at most one batch to redo
    assert 5 <= done <= stopped <= done + 1
    p = RunPaths("run")
    assert not store.exists(p.run_info)
    newest = list(store.list(p.checkpoints))[-1]
    assert newest.endswith(f"epoch-0002-step-{stopped:06d}.pt")
    ckpt = torch.load(store.url(newest), weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["partial"]["step"] == stopped

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"resuming run run from {newest}" in rerun.stderr
    assert f"epoch 2 step {stopped + 1}/" in rerun.stderr
    assert f"epoch 2 step {stopped}/" not in rerun.stderr  # no batch trained twice
    info = store.get_json(p.run_info)
    keys = (*COMPARED, "train_images")
    assert [{k: h[k] for k in keys} for h in info["history"]] == [
        {k: h[k] for k in keys} for h in reference.history
    ]
    a = torch.load(store.url(p.model), weights_only=True)
    b = torch.load(ref_store.url(p.model), weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_early_stopping_triggers_on_plateau(small_store):
    cfg = digits_config(
        small_store.uri,
        **{
            "train.epochs": 12,
            "train.optimizer": "sgd",
            "train.lr": 1e-9,  # nothing can improve
            "train.scheduler": "none",
            "train.early_stopping": {"metric": "val_loss", "patience": 2, "min_delta": 0.01},
        },
    )
    res = fit(plan_run(cfg, small_store, run_id="plateau"), small_store)
    assert res.early_stopped and res.epochs_run == 3 and res.best_epoch == 1
    assert small_store.get_json(RunPaths("plateau").run_info)["early_stopped"] is True


def test_ddp_two_processes_with_gloo(small_store, tmp_path):
    cfg_file = _write_cfg(
        tmp_path / "cfg.yaml", digits_config(small_store.uri, **{"train.epochs": 2})
    )
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "lo",
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.run(
        [
            str(VENV_BIN / "torchrun"),
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "visionline.training",
            "--config",
            str(cfg_file),
            "--run-id",
            "ddp",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = small_store.get_json(RunPaths("ddp").run_info)
    assert info["world_size"] == 2 and info["epochs_run"] == 2
    # each rank trained on its half; the all-reduced metrics cover the whole train split
    counts = small_store.get_json(f"datasets/digits/{info['dataset_version']}/dataset.json")[
        "counts"
    ]
    n_train = sum(counts["train"].values())
    assert (
        info["history"][0]["train_images"] == n_train + n_train % 2
    )  # DistributedSampler pads to even
    single_cfg = digits_config(small_store.uri, **{"train.epochs": 1})
    single = fit(plan_run(single_cfg, small_store, run_id="single"), small_store)
    assert single.history[0]["train_images"] == n_train


def test_transfer_learning_freezes_then_trains_backbone(small_store, tmp_path):
    import torchvision

    donor = torchvision.models.resnet18(weights=None, num_classes=1000)
    weights = tmp_path / "resnet18-donor.pt"
    torch.save(donor.state_dict(), weights)
    base = {
        "model.arch": "resnet18",
        "model.pretrained": str(weights),
        "data.image_size": 32,
        "train.epochs": 1,
        "train.batch_size": 32,
        "train.early_stopping": None,
    }
    frozen = digits_config(small_store.uri, **base, **{"model.freeze_backbone_epochs": 1})
    fit(plan_run(frozen, small_store, run_id="frozen"), small_store)
    trained = torch.load(small_store.url(RunPaths("frozen").model), weights_only=True)
    donor_sd = donor.state_dict()
    # the grayscale stem is the donor's RGB filters summed (gray replicated into RGB), frozen
    assert torch.allclose(trained["conv1.weight"], donor_sd["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(trained["layer4.1.conv2.weight"], donor_sd["layer4.1.conv2.weight"])
    assert trained["fc.weight"].shape == (10, 512)  # new head for 10 classes, and it learned

    unfrozen = digits_config(small_store.uri, **base, **{"model.freeze_backbone_epochs": 0})
    fit(plan_run(unfrozen, small_store, run_id="unfrozen"), small_store)
    free = torch.load(small_store.url(RunPaths("unfrozen").model), weights_only=True)
    assert not torch.equal(free["layer4.1.conv2.weight"], donor_sd["layer4.1.conv2.weight"])
