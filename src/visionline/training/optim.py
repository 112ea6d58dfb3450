"""The optimiser and the learning-rate schedule, built from ``train`` settings."""

from __future__ import annotations

from typing import Any

import torch

from visionline.config import TrainConfig


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
