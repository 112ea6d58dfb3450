"""A run's state in the store: the checkpoint written each epoch (or at the step where a
stop request ended one) and read back to resume, and the finished run's outputs, with
``run.json`` written last to mark it complete."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import torch.distributed as dist

from visionline.config import PipelineConfig
from visionline.data.validation_results import latest_result_prefix
from visionline.errors import TrainingError
from visionline.model.runs import RunPaths, load_torch, save_torch
from visionline.storage import ArtifactStore
from visionline.training.devices import unwrap
from visionline.training.trainer import Trainer
from visionline.version import code_version

log = logging.getLogger("visionline.training")  # the package's logger, as everywhere in it
KEEP_CHECKPOINTS = 2


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


def restore_checkpoint(tr: Trainer) -> None:
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


def save_checkpoint(tr: Trainer, epoch: int) -> None:
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
                "model": unwrap(tr.model).state_dict(),
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
    epochs_run = tr.history[-1]["epoch"] if tr.history else 0
    if tr.ddp.is_main:
        paths, store, data = tr.paths, tr.store, tr.data
        save_torch(store, paths.model, tr.stopper.best_state or unwrap(tr.model).state_dict())
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
