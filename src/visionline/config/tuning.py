"""Model selection (``visionline tune``): the search space, the pruner and the budget."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from visionline.config.section import Section
from visionline.config.stages import Arch, Optimizer, Scheduler


class FloatRange(Section):
    """A searched float: uniform in [low, high], or log-uniform with ``log``."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) must not exceed high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low:g}")
        return self

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


class ArchChoice(Section):
    """One candidate architecture, optionally starting from a checkpoint."""

    arch: Arch
    # File path or s3:// URI of a state_dict (see model.pretrained).
    pretrained: str | None = None
    freeze_backbone_epochs: int | None = Field(None, ge=0)
    # The name trials and reports use; default: the arch, "+pretrained" when it has one.
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")

    @property
    def label(self) -> str:
        return self.name or (self.arch + ("+pretrained" if self.pretrained else ""))


class SearchSpace(Section):
    """What a trial may change; a dimension left out (null) keeps the config's value."""

    architectures: list[ArchChoice] | None = Field(
        default_factory=lambda: [ArchChoice(arch="simple_cnn"), ArchChoice(arch="resnet18")],
        min_length=1,
    )
    optimizers: list[Optimizer] | None = Field(
        default_factory=lambda: ["adam", "adamw", "sgd"], min_length=1
    )
    lr: FloatRange | None = FloatRange(low=1e-4, high=1e-2, log=True)
    weight_decay: FloatRange | None = FloatRange(low=1e-6, high=1e-3, log=True)
    batch_sizes: list[Annotated[int, Field(ge=1)]] | None = Field(
        default_factory=lambda: [32, 64, 128], min_length=1
    )
    label_smoothing: FloatRange | None = FloatRange(low=0.0, high=0.1)
    # A factor on the config's augmentation (rotation, crop range, colour jitter):
    # 0 turns it off, 1 is the config as written.
    augment_strength: FloatRange | None = FloatRange(low=0.0, high=1.5)
    schedulers: list[Scheduler] | None = Field(
        default_factory=lambda: ["cosine", "onecycle"], min_length=1
    )

    @model_validator(mode="after")
    def _distinct(self) -> SearchSpace:
        for key in ("optimizers", "batch_sizes", "schedulers"):
            values = getattr(self, key)
            if values is not None and len(set(values)) != len(values):
                raise ValueError(f"{key}: duplicate choices {values}")
        if self.architectures is not None:
            labels = [a.label for a in self.architectures]
            if len(set(labels)) != len(labels):
                raise ValueError(
                    f"architectures: duplicate names {labels}; give each a distinct `name`"
                )
        if self.label_smoothing is not None and not (
            self.label_smoothing.low >= 0 and self.label_smoothing.high < 1
        ):
            rng = self.label_smoothing
            raise ValueError(
                f"label_smoothing: must lie in [0, 1), got [{rng.low:g}, {rng.high:g}]"
            )
        if self.lr is not None and self.lr.low <= 0:
            raise ValueError(f"lr: must be > 0, got low {self.lr.low:g}")
        for key in ("weight_decay", "augment_strength"):
            rng = getattr(self, key)
            if rng is not None and rng.low < 0:
                raise ValueError(f"{key}: must not be negative, got low {rng.low:g}")
        return self


class PrunerConfig(Section):
    """Stops hopeless trials early, from the per-epoch validation metric."""

    kind: Literal["median", "hyperband", "none"] = "median"
    # median: prune only once this many trials have finished...
    startup_trials: int = Field(2, ge=0)
    # ...and not before a trial has run this many epochs.
    warmup_epochs: int = Field(2, ge=0)
    # hyperband: the fewest epochs a trial runs, and the fraction (1/factor) kept per rung.
    min_epochs: int = Field(1, ge=1)
    reduction_factor: int = Field(3, ge=2)


class TuneConfig(Section):
    """Model selection: a search over the space above, each trial an ordinary run."""

    # The study's total: finished trials of an earlier invocation count.
    n_trials: int = Field(8, ge=1)
    # This invocation's budget; trials still running then are stopped and resume next time.
    timeout_s: float = Field(3600.0, gt=0)
    metric: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    pruner: PrunerConfig = PrunerConfig()
    # Trials at once; None: as many as the machine allows (CPUs // threads_per_trial)
    # for local training, n_trials on a cluster (it queues what it cannot place).
    parallel: int | None = Field(None, ge=1)
    threads_per_trial: int = Field(1, ge=1)
    # Epochs per trial; None: train.epochs.
    epochs: int | None = Field(None, ge=1)
    # The first trial is the config as written (where its values lie in the space), so
    # the search never ends below what a plain `visionline train` gives.
    include_base: bool = True
    seed: int = 0
    space: SearchSpace = SearchSpace()
