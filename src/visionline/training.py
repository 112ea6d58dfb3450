"""Training: ``fit()`` drives ``train_one_epoch()`` and ``evaluate()``.

Outputs, all in the artifact store under ``runs/<run_id>/``:

- ``checkpoints/epoch-NNNN.pt`` each epoch (model, optimizer, scheduler, epoch, best
  metric, early-stopping state, metrics history, config), written atomically;
- ``metrics.jsonl``, one line per epoch;
- at the end ``model.pt`` (the best weights), ``config.yaml``, ``preprocessing.json``,
  ``classes.json`` and ``run.json`` (dataset version, code version, config hash), which
  is written last and marks the run complete.

Running again with the same run id resumes from the newest checkpoint; every epoch
reseeds from (seed, epoch), so on CPU a resumed run ends exactly where an uninterrupted
one does. Under ``torchrun`` the same code runs data-parallel (NCCL on GPUs, gloo on CPU).

    python -m visionline.training --config URI --run-id ID [--store URI]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import random
import re
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from visionline.config import PipelineConfig, TrainConfig, load_config
from visionline.data.datasets import LocalCache, ManifestDataset
from visionline.data.manifest import DatasetRef, read_manifest, resolve_dataset
from visionline.data.transforms import (
    Preprocessing,
    eval_transform,
    stats_transform,
    train_transform,
)
from visionline.errors import TrainingError
from visionline.models import build_model, set_backbone_trainable
from visionline.storage import ArtifactStore, open_store
from visionline.version import code_version

log = logging.getLogger("visionline.training")  # not __name__: this also runs as __main__
KEEP_CHECKPOINTS = 2


# --------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class RunPaths:
    run_id: str

    @property
    def prefix(self) -> str:
        return f"runs/{self.run_id}"

    def checkpoint(self, epoch: int) -> str:
        return f"{self.prefix}/checkpoints/epoch-{epoch:04d}.pt"

    @property
    def checkpoints(self) -> str:
        return f"{self.prefix}/checkpoints/"

    @property
    def metrics(self) -> str:
        return f"{self.prefix}/metrics.jsonl"

    @property
    def model(self) -> str:
        return f"{self.prefix}/model.pt"

    @property
    def config(self) -> str:
        return f"{self.prefix}/config.yaml"

    @property
    def preprocessing(self) -> str:
        return f"{self.prefix}/preprocessing.json"

    @property
    def classes(self) -> str:
        return f"{self.prefix}/classes.json"

    @property
    def run_info(self) -> str:
        return f"{self.prefix}/run.json"

    @property
    def evaluation(self) -> str:
        return f"{self.prefix}/evaluation"

    @property
    def decision(self) -> str:
        return f"{self.prefix}/decision.json"


def default_run_id(cfg: PipelineConfig, dataset_version: str) -> str:
    """Same config + same data -> same run id, so a re-run finds its finished work."""
    return f"{cfg.name}-{dataset_version}-{cfg.fingerprint()[:8]}"


def check_run_id(run_id: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", run_id):
        raise TrainingError(f"invalid run id {run_id!r}: letters, digits, '_', '.', '-' only")
    return run_id


# --------------------------------------------------------------------------- devices
@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_kind: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(cfg: TrainConfig, local_rank: int = 0) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise TrainingError("train.device is 'cuda' but no GPU is visible")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or cfg.amp == "off":
        return None
    if cfg.amp == "fp16":
        return torch.float16
    if cfg.amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- data
@dataclass
class DataBundle:
    ref: DatasetRef
    classes: list[str]
    preprocessing: Preprocessing
    train: ManifestDataset
    val: ManifestDataset


def compute_mean_std(
    ds: ManifestDataset, channels: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    pixels = 0
    for x, _ in ds:
        flat = x.reshape(channels, -1).double()
        total += flat.sum(1)
        total_sq += (flat**2).sum(1)
        pixels += flat.shape[1]
    if pixels == 0:
        raise TrainingError("the train split is empty: nothing to compute statistics from")
    mean = total / pixels
    std = (total_sq / pixels - mean**2).clamp_min(1e-12).sqrt()
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)


def prepare_data(cfg: PipelineConfig, store: ArtifactStore) -> DataBundle:
    spec = cfg.data.dataset + (f":{cfg.data.version}" if cfg.data.version else "")
    ref = resolve_dataset(store, spec)
    manifest = read_manifest(store, ref)
    info = store.get_json(ref.info_key) if store.exists(ref.info_key) else {}
    classes = list(cfg.data.classes or info.get("classes") or sorted(manifest["label"].unique()))
    cache = LocalCache(store, cfg.data.cache_dir)
    geometry = Preprocessing(
        cfg.data.image_size, cfg.data.channels, (0.0,), (1.0,), cfg.data.crop_ratio
    )
    if cfg.data.mean and cfg.data.std:
        mean, std = tuple(cfg.data.mean), tuple(cfg.data.std)
    else:
        stats_ds = ManifestDataset(manifest, "train", classes, cache, stats_transform(geometry))
        mean, std = compute_mean_std(stats_ds, cfg.data.channels)
    pre = Preprocessing(cfg.data.image_size, cfg.data.channels, mean, std, cfg.data.crop_ratio)
    train = ManifestDataset(
        manifest,
        "train",
        classes,
        cache,
        train_transform(pre, cfg.augment),
        cfg.data.max_image_pixels,
    )
    val = ManifestDataset(
        manifest, "val", classes, cache, eval_transform(pre), cfg.data.max_image_pixels
    )
    if len(train) == 0 or len(val) == 0:
        raise TrainingError(
            f"dataset {ref}: train ({len(train)}) and val ({len(val)}) must be non-empty"
        )
    return DataBundle(ref, classes, pre, train, val)


def make_loader(
    ds: ManifestDataset,
    cfg: TrainConfig,
    *,
    shuffle: bool,
    epoch: int,
    ddp: Dist,
    device: torch.device,
) -> DataLoader:
    sampler = None
    generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    if shuffle and ddp.enabled:
        sampler = DistributedSampler(ds, ddp.world_size, ddp.rank, shuffle=True, seed=cfg.seed)
        sampler.set_epoch(epoch)
    return DataLoader(
        ds,
        batch_size=cfg.batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        generator=generator,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        drop_last=False,
    )


# --------------------------------------------------------------------------- optim
def build_optimizer(params: Any, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.RMSprop(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )


class LRSchedule:
    """Per-batch schedules (cosine, step, one-cycle, linear warmup) and the per-epoch
    reduce-on-plateau behind one object with one state_dict."""

    def __init__(self, opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> None:
        self.kind = cfg.scheduler
        total = cfg.epochs * steps_per_epoch
        warm = min(cfg.warmup_epochs * steps_per_epoch, max(total - 1, 0))
        S = torch.optim.lr_scheduler
        self.plateau = (
            S.ReduceLROnPlateau(opt, factor=cfg.gamma, patience=2)
            if self.kind == "plateau"
            else None
        )
        main: S.LRScheduler | None
        if self.kind == "onecycle":
            # One-cycle has its own warm-up phase.
            main, warm = S.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(total, 1)), 0
        elif self.kind == "cosine":
            main = S.CosineAnnealingLR(opt, T_max=max(total - warm, 1))
        elif self.kind == "step":
            main = S.StepLR(opt, step_size=cfg.step_size * steps_per_epoch, gamma=cfg.gamma)
        else:
            main = None
        if warm:
            warmup = S.LinearLR(opt, start_factor=0.01, total_iters=warm)
            main = S.SequentialLR(opt, [warmup, main], milestones=[warm]) if main else warmup
        self.batch = main

    def step_batch(self) -> None:
        if self.batch is not None:
            self.batch.step()

    def step_epoch(self, val_loss: float) -> None:
        if self.plateau is not None:
            self.plateau.step(val_loss)

    def state_dict(self) -> dict:
        return {
            "batch": self.batch.state_dict() if self.batch else None,
            "plateau": self.plateau.state_dict() if self.plateau else None,
        }

    def load_state_dict(self, state: dict) -> None:
        if self.batch and state.get("batch"):
            self.batch.load_state_dict(state["batch"])
        if self.plateau and state.get("plateau"):
            self.plateau.load_state_dict(state["plateau"])


# --------------------------------------------------------------------------- loop
def _all_reduce(values: list[float], ddp: Dist, device: torch.device) -> list[float]:
    if not ddp.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: LRSchedule,
    device: torch.device,
    *,
    epoch: int,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    channels_last: bool = False,
    log_every: int = 20,
    ddp: Dist = Dist(),
) -> dict[str, float]:
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    steps = len(loader)
    start = time.perf_counter()
    amp = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    for step, (x, y) in enumerate(loader, start=1):
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with amp:
            logits = model(x)
            loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        schedule.step_batch()
        # Accumulate on the device: no host sync per batch.
        loss_sum += loss.detach().double() * y.size(0)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += y.size(0)
        if ddp.is_main and (step % log_every == 0 or step == steps):
            log.info("epoch %d step %d/%d loss %.4f", epoch, step, steps, loss.item())
    seconds = time.perf_counter() - start
    total_loss, total_correct, total_seen = _all_reduce(
        [float(loss_sum), float(correct), float(seen)], ddp, device
    )
    return {
        "loss": total_loss / max(total_seen, 1),
        "accuracy": total_correct / max(total_seen, 1),
        "images": int(total_seen),
        "seconds": seconds,
        "images_per_s": total_seen / seconds if seconds > 0 else 0.0,
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    amp = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with amp:
            logits = model(x)
        loss_sum += criterion(logits.float(), y).double() * y.size(0)
        correct += (logits.argmax(1) == y).sum()
        seen += y.size(0)
    return {"loss": float(loss_sum) / max(seen, 1), "accuracy": int(correct) / max(seen, 1)}


# --------------------------------------------------------------------------- state
@dataclass
class EarlyStopping:
    metric: str
    patience: int | None
    min_delta: float
    best: float = math.nan
    best_epoch: int = 0
    bad_epochs: int = 0
    best_state: dict = field(default_factory=dict)

    @property
    def mode_max(self) -> bool:
        return self.metric.endswith("accuracy")

    def update(self, epoch: int, value: float, model: nn.Module) -> bool:
        """Record an epoch; return True when training should stop."""
        improved = math.isnan(self.best) or (
            value > self.best + self.min_delta
            if self.mode_max
            else value < self.best - self.min_delta
        )
        if improved:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            self.bad_epochs += 1
        return self.patience is not None and self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "best_state": self.best_state,
        }

    def load_state_dict(self, s: dict) -> None:
        self.best, self.best_epoch, self.bad_epochs = s["best"], s["best_epoch"], s["bad_epochs"]
        self.best_state = s["best_state"]


def _save(store: ArtifactStore, key: str, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    store.put_bytes(key, buf.getvalue())


def _load(store: ArtifactStore, key: str) -> Any:
    return torch.load(
        io.BytesIO(store.get_bytes(key, verify=True)), map_location="cpu", weights_only=True
    )


def latest_checkpoint(store: ArtifactStore, paths: RunPaths) -> str | None:
    keys = [k for k in store.list(paths.checkpoints) if k.endswith(".pt")]
    return keys[-1] if keys else None


@dataclass
class FitResult:
    run_id: str
    epochs_run: int
    best_epoch: int
    best_metric: float
    early_stopped: bool
    history: list[dict]
    resumed_from: int | None
    already_complete: bool = False


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def fit(cfg: PipelineConfig, store: ArtifactStore, run_id: str) -> FitResult:
    """Train (or resume, or recognise as finished) run ``run_id`` with ``cfg``."""
    paths = RunPaths(check_run_id(run_id))
    t = cfg.train
    if store.exists(paths.run_info):
        info = store.get_json(paths.run_info)
        if info.get("config_fingerprint") != cfg.fingerprint():
            raise TrainingError(
                f"run {run_id} already finished with another config: use a new run id"
            )
        log.info("run %s is already complete: nothing to do", run_id)
        return FitResult(
            run_id,
            info["epochs_run"],
            info["best_epoch"],
            info["best_metric"],
            info["early_stopped"],
            info["history"],
            None,
            already_complete=True,
        )

    device_kind = (
        "cuda"
        if (t.device == "cuda" or (t.device == "auto" and torch.cuda.is_available()))
        else "cpu"
    )
    ddp = init_distributed(device_kind)
    device = resolve_device(t, ddp.local_rank)
    seed_everything(t.seed)
    data = prepare_data(cfg, store)
    model = build_model(cfg.model, len(data.classes), cfg.data.channels, cfg.data.image_size).to(
        device
    )
    channels_last = t.channels_last and device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model.parameters(), t)
    steps_per_epoch = len(make_loader(data.train, t, shuffle=True, epoch=0, ddp=ddp, device=device))
    schedule = LRSchedule(optimizer, t, steps_per_epoch)
    amp_dtype = autocast_dtype(t, device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
    es_cfg = t.early_stopping
    stopper = EarlyStopping(
        es_cfg.metric if es_cfg else "val_loss",
        es_cfg.patience if es_cfg else None,
        es_cfg.min_delta if es_cfg else 0.0,
    )
    history: list[dict] = []
    start_epoch, resumed_from = 1, None

    ckpt_key = latest_checkpoint(store, paths)
    if ckpt_key:
        ckpt = _load(store, ckpt_key)
        if ckpt["config_fingerprint"] != cfg.fingerprint():
            raise TrainingError(
                f"run {run_id} has checkpoints from another config ({ckpt_key}): use a new run id"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        stopper.load_state_dict(ckpt["early_stopping"])
        history = list(ckpt["history"])
        start_epoch = resumed_from = ckpt["epoch"] + 1
        if ddp.is_main:
            log.info("resuming run %s from %s", run_id, ckpt_key)

    if ddp.enabled:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if ddp.is_main:
        store.put_bytes(paths.config, cfg.to_yaml().encode())
        log.info(
            "run %s: %s on %s, %d train / %d val images, %d classes, device %s x%d",
            run_id,
            cfg.model.arch,
            data.ref,
            len(data.train),
            len(data.val),
            len(data.classes),
            device,
            ddp.world_size,
        )

    freeze = cfg.model.freeze_backbone_epochs
    early_stopped = bool(history and history[-1].get("stop"))
    epoch = start_epoch - 1
    for epoch in range(start_epoch, t.epochs + 1):
        if early_stopped:
            break
        # Reseed per epoch: augmentation, dropout and shuffling depend only on
        # (seed, epoch), which is what makes a resumed run match an uninterrupted one.
        seed_everything(t.seed * 1000 + epoch * 7919 + ddp.rank)
        set_backbone_trainable(_unwrap(model), cfg.model.arch, trainable=epoch > freeze)
        train_loader = make_loader(data.train, t, shuffle=True, epoch=epoch, ddp=ddp, device=device)
        val_loader = make_loader(data.val, t, shuffle=False, epoch=epoch, ddp=Dist(), device=device)
        tr = train_one_epoch(
            model,
            train_loader,
            criterion,
            optimizer,
            schedule,
            device,
            epoch=epoch,
            amp_dtype=amp_dtype,
            scaler=scaler,
            channels_last=channels_last,
            log_every=t.log_every,
            ddp=ddp,
        )
        va = evaluate(model, val_loader, criterion, device, amp_dtype)
        schedule.step_epoch(va["loss"])
        monitored = va["accuracy"] if stopper.mode_max else va["loss"]
        stop = stopper.update(epoch, monitored, _unwrap(model))
        row = {
            "epoch": epoch,
            "train_loss": round(tr["loss"], 6),
            "train_accuracy": round(tr["accuracy"], 6),
            "val_loss": round(va["loss"], 6),
            "val_accuracy": round(va["accuracy"], 6),
            "lr": optimizer.param_groups[0]["lr"],
            "train_images": tr["images"],
            "images_per_s": round(tr["images_per_s"], 1),
            "seconds": round(tr["seconds"], 3),
            "world_size": ddp.world_size,
            "stop": stop,
        }
        history.append(row)
        if ddp.is_main:
            log.info(
                "epoch %d/%d train_loss %.4f train_acc %.4f val_loss %.4f val_acc %.4f lr %.2e %.0f img/s",
                epoch,
                t.epochs,
                tr["loss"],
                tr["accuracy"],
                va["loss"],
                va["accuracy"],
                row["lr"],
                tr["images_per_s"],
            )
            _save(
                store,
                paths.checkpoint(epoch),
                {
                    "epoch": epoch,
                    "model": _unwrap(model).state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": schedule.state_dict(),
                    "scaler": scaler.state_dict() if scaler else None,
                    "early_stopping": stopper.state_dict(),
                    "history": history,
                    "config": cfg.model_dump(mode="json"),
                    "config_fingerprint": cfg.fingerprint(),
                },
            )
            store.put_bytes(paths.metrics, "".join(json.dumps(h) + "\n" for h in history).encode())
            for old in [k for k in store.list(paths.checkpoints) if k.endswith(".pt")][
                :-KEEP_CHECKPOINTS
            ]:
                store.delete(old)
        if ddp.enabled:
            dist.barrier()
        if stop:
            early_stopped = True
            log.info(
                "early stopping at epoch %d: %s did not improve for %d epochs",
                epoch,
                stopper.metric,
                stopper.bad_epochs,
            )
            break

    epochs_run = history[-1]["epoch"] if history else 0
    if ddp.is_main:
        _save(store, paths.model, stopper.best_state or _unwrap(model).state_dict())
        store.put_bytes(paths.preprocessing, data.preprocessing.to_json().encode())
        store.put_json(paths.classes, data.classes)
        store.put_json(
            paths.run_info,
            {
                "run_id": run_id,
                "status": "completed",
                "dataset": str(data.ref),
                "dataset_name": data.ref.name,
                "dataset_version": data.ref.version,
                "code_version": code_version(),
                "config_fingerprint": cfg.fingerprint(),
                "arch": cfg.model.arch,
                "classes": data.classes,
                "preprocessing": json.loads(data.preprocessing.to_json()),
                "epochs_run": epochs_run,
                "best_epoch": stopper.best_epoch,
                "best_metric": stopper.best,
                "monitored_metric": stopper.metric,
                "early_stopped": early_stopped,
                "resumed_from": resumed_from,
                "world_size": ddp.world_size,
                "device": str(device),
                "history": history,
                "finished_at": datetime.now(UTC).isoformat(),
            },
        )
    if ddp.enabled:
        dist.barrier()
        dist.destroy_process_group()
    return FitResult(
        run_id, epochs_run, stopper.best_epoch, stopper.best, early_stopped, history, resumed_from
    )


def load_trained_model(
    store: ArtifactStore, run_id: str, device: str = "cpu"
) -> tuple[nn.Module, dict]:
    """The best weights of a finished run, rebuilt from its own recorded config."""
    paths = RunPaths(check_run_id(run_id))
    if not store.exists(paths.run_info):
        raise TrainingError(f"run {run_id} is not complete in {store.uri} (no run.json)")
    info = store.get_json(paths.run_info)
    cfg = load_run_config(store, run_id)
    model = build_model(
        cfg.model.model_copy(update={"pretrained": None}),
        len(info["classes"]),
        cfg.data.channels,
        cfg.data.image_size,
    )
    model.load_state_dict(_load(store, paths.model))
    return model.to(device).eval(), info


def load_run_config(store: ArtifactStore, run_id: str) -> PipelineConfig:
    import yaml

    from visionline.config import parse_config

    key = RunPaths(run_id).config
    return parse_config(yaml.safe_load(store.get_bytes(key)), source=store.url(key))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m visionline.training", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--config", required=True, help="config YAML: a path or s3:// URI")
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--store", help="override the config's store URI")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("visionline").setLevel(logging.INFO)
    cfg = load_config(args.config)
    if args.store:
        cfg = cfg.with_overrides(store=args.store)
    result = fit(cfg, open_store(cfg.store), args.run_id)
    print(
        json.dumps(
            {
                "run_id": result.run_id,
                "epochs_run": result.epochs_run,
                "best_epoch": result.best_epoch,
                "early_stopped": result.early_stopped,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
