"""Early stopping: the monitored metric's best value, its epoch and weights, and the
count of epochs without improvement."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn


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
