"""The training loop: ``fit()`` runs a planned run's epochs, each ``run_epoch()`` being
``train_one_epoch()`` then ``evaluate()`` on the val split, a checkpoint after each."""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from visionline.errors import Preempted
from visionline.model.architectures import set_backbone_trainable
from visionline.model.runs import RunPaths, check_run_id
from visionline.storage import ArtifactStore
from visionline.training.checkpoint import (
    FitResult,
    finish,
    finished_result,
    restore_checkpoint,
    save_checkpoint,
)
from visionline.training.data import make_loader
from visionline.training.devices import SINGLE_PROCESS, Dist, seed_everything, unwrap
from visionline.training.optim import LRSchedule
from visionline.training.plan import RunPlan
from visionline.training.resume import Preemption, step_seed
from visionline.training.trainer import Trainer, announce, build_trainer

log = logging.getLogger("visionline.training")  # the package's logger, as everywhere in it


def _all_reduce(values: list[float], ddp: Dist, device: torch.device) -> list[float]:
    if not ddp.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _backward_and_step(
    loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None
) -> None:
    """Gradients of ``loss`` and one optimiser step (through the loss scaler under fp16)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


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
    ddp: Dist = SINGLE_PROCESS,
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
        _backward_and_step(loss, optimizer, scaler)
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


def run_epoch(tr: Trainer, epoch: int) -> dict | None:
    """Train one epoch, validate, update the schedule and early stopping; the history row
    (None when a stop request ended the epoch early: ``tr.partial`` says where)."""
    t, ddp, device = tr.cfg.train, tr.ddp, tr.device
    # Reseed per epoch: augmentation, dropout and shuffling depend only on
    # (seed, epoch), which is what makes a resumed run match an uninterrupted one.
    seed_everything(t.seed * 1000 + epoch * 7919 + ddp.rank)
    set_backbone_trainable(
        unwrap(tr.model), tr.cfg.model.arch, trainable=epoch > tr.cfg.model.freeze_backbone_epochs
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
    stop = tr.stopper.update(epoch, monitored, unwrap(tr.model))
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


def fit(
    plan: RunPlan,
    store: ArtifactStore,
    origin: dict[str, str] | None = None,
    preemption: Preemption | None = None,
) -> FitResult:
    """Train (or resume, or recognise as finished) run ``plan.run_id`` with ``plan.cfg`` on
    ``plan.dataset``.

    ``origin`` (e.g. the orchestrator's run id) is recorded in ``run.json``.
    ``preemption``: the SIGTERM handler the caller installed before its setup (the
    trainer's entry does), which the training loop takes over.
    """
    paths = RunPaths(check_run_id(plan.run_id))
    done = finished_result(plan.cfg, store, paths)
    if done is not None:
        return done
    tr = build_trainer(plan, store, paths)
    if preemption is not None:
        tr.preemption = preemption
    restore_checkpoint(tr)
    announce(tr)
    with tr.preemption:  # SIGTERM: checkpoint at the next batch boundary, then exit
        tr.preemption.immediate = False
        for epoch in range(tr.start_epoch, plan.cfg.train.epochs + 1):
            if tr.early_stopped:
                break
            _stop_if_asked(tr)
            run_epoch(tr, epoch)
            save_checkpoint(tr, epoch)
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
