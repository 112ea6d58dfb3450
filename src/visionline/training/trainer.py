"""The ``Trainer``: everything one run's epochs share (devices, data, model, optimiser,
schedule, early stopping, history), built once before the first epoch."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from visionline.config import PipelineConfig
from visionline.model.architectures import build_model
from visionline.model.runs import RunPaths
from visionline.storage import ArtifactStore
from visionline.training.data import DataBundle, make_loader, prepare_data
from visionline.training.devices import (
    Dist,
    autocast_dtype,
    init_distributed,
    resolve_device,
    seed_everything,
)
from visionline.training.early_stopping import EarlyStopping
from visionline.training.optim import LRSchedule, build_optimizer
from visionline.training.plan import RunPlan
from visionline.training.resume import Preemption

# One logger for every part of the trainer, named for the package (operators filter on it).
log = logging.getLogger("visionline.training")


@dataclass
class Trainer:
    """Everything one run's epochs share: built once by ``build_trainer``, advanced by
    ``run_epoch``."""

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


def build_trainer(plan: RunPlan, store: ArtifactStore, paths: RunPaths) -> Trainer:
    """Devices, data, model, optimizer, schedule and early stopping for a fresh start."""
    cfg = plan.cfg
    t = cfg.train
    device_kind = (
        "cuda"
        if (t.device == "cuda" or (t.device == "auto" and torch.cuda.is_available()))
        else "cpu"
    )
    ddp = init_distributed(device_kind, cfg.compute.group_timeout_seconds)
    device = resolve_device(t, ddp.local_rank)
    seed_everything(t.seed)
    data = prepare_data(cfg, store, plan.dataset)
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


def announce(tr: Trainer) -> None:
    """Wrap the model for data parallelism (under torchrun) and, on the main rank, record
    the config and say what the run is."""
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
