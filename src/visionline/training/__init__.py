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
import json
import logging
import math
import os
import random
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
from torch.utils.data import DataLoader

from visionline.config import PipelineConfig, TrainConfig, load_config
from visionline.data.datasets import LocalCache, ManifestDataset
from visionline.data.images import image_limits
from visionline.data.manifest import DatasetRef, read_manifest, resolve_dataset
from visionline.data.transforms import (
    Preprocessing,
    eval_transform,
    stats_transform,
    train_transform,
)
from visionline.errors import EXIT_CONFIG_ERROR, EXIT_PREEMPTED, ConfigError, TrainingError
from visionline.model.architectures import build_model, set_backbone_trainable
from visionline.model.runs import RunPaths, check_run_id, load_torch, save_torch
from visionline.storage import ArtifactStore, open_store
from visionline.training.plan import dataset_spec
from visionline.training.resume import (
    EpochOrder,
    Preempted,
    Preemption,
    SeededSamples,
    step_seed,
)
from visionline.version import code_version

log = logging.getLogger("visionline.training")  # not __name__: this also runs as __main__
KEEP_CHECKPOINTS = 2


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
    ref = resolve_dataset(store, dataset_spec(cfg))
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
    limits = image_limits(cfg.data, pre.resize_to)
    train = ManifestDataset(
        manifest, "train", classes, cache, train_transform(pre, cfg.augment), image_limits=limits
    )
    val = ManifestDataset(manifest, "val", classes, cache, eval_transform(pre), image_limits=limits)
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
    start: int = 0,
) -> DataLoader:
    """Training data (``shuffle``) comes in the epoch's order from sample ``start`` on, each
    sample under its own seed (``visionline.training.resume``): a run stopped at any batch resumes
    with exactly the batches it would have seen."""
    sampler = None
    generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    if shuffle:
        sampler = EpochOrder(
            len(ds), cfg.seed, epoch, rank=ddp.rank, world_size=ddp.world_size, start=start
        )
        ds = SeededSamples(ds)
    return DataLoader(
        ds,
        batch_size=cfg.batch_size,
        shuffle=False,
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
    start_step: int = 0,
    totals: dict | None = None,
    preemption: Preemption | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """One epoch (or its rest, from ``start_step`` with the running ``totals``). With
    ``seed`` each step reseeds first (dropout depends on the step, not on history); with
    ``preemption`` a stop request ends the epoch after the batch in flight
    (``interrupted``, ``step``: the last step done)."""
    model.train()
    totals = totals or {}
    loss_sum = torch.tensor(totals.get("loss_sum", 0.0), dtype=torch.float64, device=device)
    correct = torch.tensor(totals.get("correct", 0), dtype=torch.int64, device=device)
    seen = int(totals.get("seen", 0))
    steps = start_step + len(loader)
    start = time.perf_counter() - float(totals.get("seconds", 0.0))
    amp = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    interrupted, step = False, start_step
    for step, (x, y) in enumerate(loader, start=start_step + 1):
        if seed is not None:
            torch.manual_seed(step_seed(seed, epoch, ddp.rank, step))
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
        if preemption is not None:
            preemption.epoch, preemption.step = epoch, step  # steps done, for the stop's log
        if ddp.is_main and (step % log_every == 0 or step == steps):
            log.info("epoch %d step %d/%d loss %.4f", epoch, step, steps, loss.item())
        if preemption is not None and step < steps and preemption.should_stop(ddp, device):
            interrupted = True
            break
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
        "interrupted": interrupted,
        "step": step,
        "totals": {
            "loss_sum": total_loss,
            "correct": int(total_correct),
            "seen": int(total_seen),
            "seconds": seconds,
        },
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


@dataclass
class Trainer:
    """Everything one run's epochs share: built once by ``setup``, advanced by ``run_epoch``."""

    cfg: PipelineConfig
    store: ArtifactStore
    paths: RunPaths
    ddp: Dist
    device: torch.device
    data: DataBundle
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    criterion: nn.Module
    stopper: EarlyStopping
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None
    channels_last: bool
    history: list[dict] = field(default_factory=list)
    start_epoch: int = 1
    resumed_from: int | None = None
    # a stop mid-epoch: {"epoch", "step", running totals}; checkpointed and resumed
    partial: dict | None = None
    preemption: Preemption = field(default_factory=Preemption)

    @property
    def early_stopped(self) -> bool:
        return bool(self.history and self.history[-1].get("stop"))


def finished_result(cfg: PipelineConfig, store: ArtifactStore, paths: RunPaths) -> FitResult | None:
    """The result of a run that already completed with this config, or None."""
    if not store.exists(paths.run_info):
        return None
    info = store.get_json(paths.run_info)
    if info.get("config_fingerprint") != cfg.fingerprint():
        raise TrainingError(
            f"run {paths.run_id} already finished with another config: use a new run id"
        )
    log.info("run %s is already complete: nothing to do", paths.run_id)
    return FitResult(
        paths.run_id,
        info["epochs_run"],
        info["best_epoch"],
        info["best_metric"],
        info["early_stopped"],
        info["history"],
        None,
        already_complete=True,
    )


def setup(cfg: PipelineConfig, store: ArtifactStore, paths: RunPaths) -> Trainer:
    """Devices, data, model, optimizer, schedule and early stopping for a fresh start."""
    t = cfg.train
    device_kind = (
        "cuda"
        if (t.device == "cuda" or (t.device == "auto" and torch.cuda.is_available()))
        else "cpu"
    )
    ddp = init_distributed(device_kind)
    device = resolve_device(t, ddp.local_rank)
    seed_everything(t.seed)
    data = prepare_data(cfg, store)
    model = build_model(cfg.model, len(data.classes), cfg.data.channels, cfg.data.image_size)
    model = model.to(device)
    channels_last = t.channels_last and device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model.parameters(), t)
    steps_per_epoch = len(make_loader(data.train, t, shuffle=True, epoch=0, ddp=ddp, device=device))
    amp_dtype = autocast_dtype(t, device)
    es = t.early_stopping
    return Trainer(
        cfg=cfg,
        store=store,
        paths=paths,
        ddp=ddp,
        device=device,
        data=data,
        model=model,
        optimizer=optimizer,
        schedule=LRSchedule(optimizer, t, steps_per_epoch),
        criterion=nn.CrossEntropyLoss(label_smoothing=t.label_smoothing),
        stopper=EarlyStopping(
            es.metric if es else "val_loss",
            es.patience if es else None,
            es.min_delta if es else 0.0,
        ),
        amp_dtype=amp_dtype,
        scaler=torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None,
        channels_last=channels_last,
    )


def resume(tr: Trainer) -> None:
    """Continue from the newest checkpoint of this run, if there is one."""
    key = latest_checkpoint(tr.store, tr.paths)
    if not key:
        return
    ckpt = load_torch(tr.store, key)
    if ckpt["config_fingerprint"] != tr.cfg.fingerprint():
        raise TrainingError(
            f"run {tr.paths.run_id} has checkpoints from another config ({key}): use a new run id"
        )
    tr.model.load_state_dict(ckpt["model"])
    tr.optimizer.load_state_dict(ckpt["optimizer"])
    tr.schedule.load_state_dict(ckpt["scheduler"])
    if tr.scaler is not None and ckpt.get("scaler"):
        tr.scaler.load_state_dict(ckpt["scaler"])
    tr.stopper.load_state_dict(ckpt["early_stopping"])
    tr.history = list(ckpt["history"])
    tr.start_epoch = tr.resumed_from = ckpt["epoch"] + 1
    tr.partial = ckpt.get("partial")
    if tr.ddp.is_main:
        log.info("resuming run %s from %s", tr.paths.run_id, key)


def announce(tr: Trainer) -> None:
    if tr.ddp.enabled:
        tr.model = nn.parallel.DistributedDataParallel(
            tr.model, device_ids=[tr.device.index] if tr.device.type == "cuda" else None
        )
    if tr.ddp.is_main:
        tr.store.put_bytes(tr.paths.config, tr.cfg.to_yaml().encode())
        log.info(
            "run %s: %s on %s, %d train / %d val images, %d classes, device %s x%d",
            tr.paths.run_id,
            tr.cfg.model.arch,
            tr.data.ref,
            len(tr.data.train),
            len(tr.data.val),
            len(tr.data.classes),
            tr.device,
            tr.ddp.world_size,
        )


def run_epoch(tr: Trainer, epoch: int) -> dict | None:
    """Train one epoch, validate, update the schedule and early stopping; the history row
    (None when a stop request ended the epoch early: ``tr.partial`` says where)."""
    t, ddp, device = tr.cfg.train, tr.ddp, tr.device
    # Reseed per epoch: augmentation, dropout and shuffling depend only on
    # (seed, epoch), which is what makes a resumed run match an uninterrupted one.
    seed_everything(t.seed * 1000 + epoch * 7919 + ddp.rank)
    set_backbone_trainable(
        _unwrap(tr.model), tr.cfg.model.arch, trainable=epoch > tr.cfg.model.freeze_backbone_epochs
    )
    partial = tr.partial if tr.partial and tr.partial["epoch"] == epoch else None
    done = partial["step"] if partial else 0
    train_loader = make_loader(
        tr.data.train,
        t,
        shuffle=True,
        epoch=epoch,
        ddp=ddp,
        device=device,
        start=done * t.batch_size,
    )
    val_loader = make_loader(tr.data.val, t, shuffle=False, epoch=epoch, ddp=Dist(), device=device)
    trained = train_one_epoch(
        tr.model,
        train_loader,
        tr.criterion,
        tr.optimizer,
        tr.schedule,
        device,
        epoch=epoch,
        amp_dtype=tr.amp_dtype,
        scaler=tr.scaler,
        channels_last=tr.channels_last,
        log_every=t.log_every,
        ddp=ddp,
        start_step=done,
        # the running totals live on rank 0 only: the epoch's all-reduce adds them once
        totals=partial["totals"] if partial and ddp.is_main else None,
        preemption=tr.preemption,
        seed=t.seed,
    )
    tr.partial = None
    if trained["interrupted"]:
        tr.partial = {"epoch": epoch, "step": trained["step"], "totals": trained["totals"]}
        return None
    va = evaluate(tr.model, val_loader, tr.criterion, device, tr.amp_dtype)
    tr.schedule.step_epoch(va["loss"])
    monitored = va["accuracy"] if tr.stopper.mode_max else va["loss"]
    stop = tr.stopper.update(epoch, monitored, _unwrap(tr.model))
    row = {
        "epoch": epoch,
        "train_loss": round(trained["loss"], 6),
        "train_accuracy": round(trained["accuracy"], 6),
        "val_loss": round(va["loss"], 6),
        "val_accuracy": round(va["accuracy"], 6),
        "lr": tr.optimizer.param_groups[0]["lr"],
        "train_images": trained["images"],
        "images_per_s": round(trained["images_per_s"], 1),
        "seconds": round(trained["seconds"], 3),
        "world_size": ddp.world_size,
        "stop": stop,
    }
    tr.history.append(row)
    if ddp.is_main:
        log.info(
            "epoch %d/%d train_loss %.4f train_acc %.4f val_loss %.4f val_acc %.4f lr %.2e %.0f img/s",
            epoch,
            t.epochs,
            trained["loss"],
            trained["accuracy"],
            va["loss"],
            va["accuracy"],
            row["lr"],
            trained["images_per_s"],
        )
    return row


def checkpoint(tr: Trainer, epoch: int) -> None:
    """Atomic checkpoint + metrics.jsonl for ``epoch`` (or for the step of it where a stop
    request ended it: ``epoch-NNNN-step-SSSSSS.pt``, which sorts between the epoch before
    and this epoch's own); older checkpoints are pruned."""
    key, done = tr.paths.checkpoint(epoch), epoch
    if tr.partial is not None:
        key = key.removesuffix(".pt") + f"-step-{tr.partial['step']:06d}.pt"
        done = epoch - 1
    if tr.ddp.is_main:
        save_torch(
            tr.store,
            key,
            {
                "epoch": done,
                "partial": tr.partial,
                "model": _unwrap(tr.model).state_dict(),
                "optimizer": tr.optimizer.state_dict(),
                "scheduler": tr.schedule.state_dict(),
                "scaler": tr.scaler.state_dict() if tr.scaler else None,
                "early_stopping": tr.stopper.state_dict(),
                "history": tr.history,
                "config": tr.cfg.model_dump(mode="json"),
                "config_fingerprint": tr.cfg.fingerprint(),
            },
        )
        tr.store.put_bytes(
            tr.paths.metrics, "".join(json.dumps(h) + "\n" for h in tr.history).encode()
        )
        checkpoints = [k for k in tr.store.list(tr.paths.checkpoints) if k.endswith(".pt")]
        for old in checkpoints[:-KEEP_CHECKPOINTS]:
            tr.store.delete(old)
    if tr.ddp.enabled:
        dist.barrier()


def finish(tr: Trainer, origin: dict[str, str] | None = None) -> FitResult:
    """Best weights and the run's description; ``run.json`` last marks the run complete."""
    from visionline.data.validation import latest_result_prefix

    epochs_run = tr.history[-1]["epoch"] if tr.history else 0
    if tr.ddp.is_main:
        paths, store, data = tr.paths, tr.store, tr.data
        save_torch(store, paths.model, tr.stopper.best_state or _unwrap(tr.model).state_dict())
        store.put_bytes(paths.preprocessing, data.preprocessing.to_json().encode())
        store.put_json(paths.classes, data.classes)
        store.put_json(
            paths.run_info,
            {
                "run_id": paths.run_id,
                "status": "completed",
                "dataset": str(data.ref),
                "dataset_name": data.ref.name,
                "dataset_version": data.ref.version,
                # the data gate's result this run trained behind (None: never validated)
                "validation": latest_result_prefix(store, data.ref),
                "origin": dict(origin or {}),
                "code_version": code_version(),
                "config_fingerprint": tr.cfg.fingerprint(),
                "arch": tr.cfg.model.arch,
                "classes": data.classes,
                "preprocessing": json.loads(data.preprocessing.to_json()),
                "epochs_run": epochs_run,
                "best_epoch": tr.stopper.best_epoch,
                "best_metric": tr.stopper.best,
                "monitored_metric": tr.stopper.metric,
                "early_stopped": tr.early_stopped,
                "resumed_from": tr.resumed_from,
                "world_size": tr.ddp.world_size,
                "device": str(tr.device),
                "history": tr.history,
                "finished_at": datetime.now(UTC).isoformat(),
            },
        )
    if tr.ddp.enabled:
        dist.barrier()
        dist.destroy_process_group()
    return FitResult(
        tr.paths.run_id,
        epochs_run,
        tr.stopper.best_epoch,
        tr.stopper.best,
        tr.early_stopped,
        tr.history,
        tr.resumed_from,
    )


def fit(
    cfg: PipelineConfig, store: ArtifactStore, run_id: str, origin: dict[str, str] | None = None
) -> FitResult:
    """Train (or resume, or recognise as finished) run ``run_id`` with ``cfg``.

    ``origin`` (e.g. the orchestrator's run id) is recorded in ``run.json``.
    """
    paths = RunPaths(check_run_id(run_id))
    done = finished_result(cfg, store, paths)
    if done is not None:
        return done
    tr = setup(cfg, store, paths)
    resume(tr)
    announce(tr)
    with tr.preemption:  # SIGTERM: checkpoint at the next batch boundary, then exit
        for epoch in range(tr.start_epoch, cfg.train.epochs + 1):
            if tr.early_stopped:
                break
            _stop_if_asked(tr)
            run_epoch(tr, epoch)
            checkpoint(tr, epoch)
            _stop_if_asked(tr)
            if tr.early_stopped:
                log.info(
                    "early stopping at epoch %d: %s did not improve for %d epochs",
                    epoch,
                    tr.stopper.metric,
                    tr.stopper.bad_epochs,
                )
    return finish(tr, origin)


def _stop_if_asked(tr: Trainer) -> None:
    """Between epochs or after a checkpoint: end the run if SIGTERM asked (on any rank)."""
    if not tr.preemption.should_stop(tr.ddp, tr.device):
        return
    at = f"epoch {tr.partial['epoch']} step {tr.partial['step']}" if tr.partial else "an epoch end"
    during = tr.preemption.during or ("?", "?")
    log.info(
        "run %s: stopped on SIGTERM at %s (signalled after epoch %s step %s); checkpointed, "
        "running it again resumes there",
        tr.paths.run_id,
        at,
        *during,
    )
    if tr.ddp.enabled:
        dist.destroy_process_group()
    raise Preempted(f"run {tr.paths.run_id} stopped on SIGTERM at {at}")


def _origin(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--origin {pair!r}: expected key=value")
        out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m visionline.training", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--config", required=True, help="config YAML: a path or s3:// URI")
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--store", help="override the config's store URI")
    ap.add_argument(
        "--origin",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="recorded in run.json (e.g. prefect_flow_run=<id>)",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("visionline").setLevel(logging.INFO)
    try:
        cfg = load_config(args.config)
        if args.store:
            cfg = cfg.with_overrides(store=args.store)
        origin = _origin(args.origin)
        check_run_id(args.run_id)
    except (ConfigError, TrainingError) as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    if cfg.compute.threads:
        # Runs sharing one machine (a search's parallel trials) each use their share of it.
        torch.set_num_threads(cfg.compute.threads)
    try:
        result = fit(cfg, open_store(cfg.store), args.run_id, origin)
    except Preempted:
        return EXIT_PREEMPTED
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
