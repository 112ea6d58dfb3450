"""The search space: which values a trial tries, and how they become a run's config.

A trial's parameters are applied to the pipeline config as dotted overrides, so a
trial is an ordinary training run whose run id derives from those parameters.
"""

from __future__ import annotations

from typing import Any

import optuna

from visionline.config import PipelineConfig, SearchSpace
from visionline.errors import TuningError

# The searched dimensions, in the order tables and plots list them.
PARAMS = (
    "model",
    "optimizer",
    "lr",
    "weight_decay",
    "batch_size",
    "label_smoothing",
    "augment_strength",
    "scheduler",
)


def format_value(v: Any) -> str:
    """A parameter or metric value as the progress lines and tables show it."""
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def trial_epochs(cfg: PipelineConfig) -> int:
    """How many epochs each trial trains (and the pruner's horizon)."""
    return cfg.tune.epochs or cfg.train.epochs


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Ask the trial for a value of every searched dimension."""
    p: dict[str, Any] = {}
    if space.architectures:
        p["model"] = trial.suggest_categorical("model", [a.label for a in space.architectures])
    if space.optimizers:
        p["optimizer"] = trial.suggest_categorical("optimizer", list(space.optimizers))
    for name in ("lr", "weight_decay"):
        rng = getattr(space, name)
        if rng is not None:
            p[name] = trial.suggest_float(name, rng.low, rng.high, log=rng.log)
    if space.batch_sizes:
        p["batch_size"] = trial.suggest_categorical("batch_size", list(space.batch_sizes))
    for name in ("label_smoothing", "augment_strength"):
        rng = getattr(space, name)
        if rng is not None:
            p[name] = trial.suggest_float(name, rng.low, rng.high, log=rng.log)
    if space.schedulers:
        p["scheduler"] = trial.suggest_categorical("scheduler", list(space.schedulers))
    return p


def base_params(cfg: PipelineConfig) -> tuple[dict[str, Any], list[str]]:
    """The config as written, as trial parameters; and the dimensions where it lies
    outside the search space (those the first trial samples instead)."""
    space, t, m = cfg.tune.space, cfg.train, cfg.model
    params: dict[str, Any] = {}
    outside: list[str] = []

    def pick(name: str, value: Any, allowed: bool) -> None:
        if allowed:
            params[name] = value
        else:
            outside.append(name)

    if space.architectures:
        match = [
            a.label
            for a in space.architectures
            if a.arch == m.arch
            and a.pretrained == m.pretrained
            and a.freeze_backbone_epochs in (None, m.freeze_backbone_epochs)
        ]
        pick("model", match[0] if match else None, bool(match))
    if space.optimizers:
        pick("optimizer", t.optimizer, t.optimizer in space.optimizers)
    if space.lr:
        pick("lr", t.lr, space.lr.contains(t.lr))
    if space.weight_decay:
        pick("weight_decay", t.weight_decay, space.weight_decay.contains(t.weight_decay))
    if space.batch_sizes:
        pick("batch_size", t.batch_size, t.batch_size in space.batch_sizes)
    if space.label_smoothing:
        pick(
            "label_smoothing", t.label_smoothing, space.label_smoothing.contains(t.label_smoothing)
        )
    if space.augment_strength:
        pick("augment_strength", 1.0, space.augment_strength.contains(1.0))
    if space.schedulers:
        pick("scheduler", t.scheduler, t.scheduler in space.schedulers)
    return params, outside


def trial_overrides(cfg: PipelineConfig, params: dict[str, Any]) -> dict[str, Any]:
    """Dotted-key overrides that turn the pipeline config into a trial's config."""
    o: dict[str, Any] = {}
    space = cfg.tune.space
    if "model" in params:
        choice = next((a for a in space.architectures or [] if a.label == params["model"]), None)
        if choice is None:
            raise TuningError(f"trial model {params['model']!r} is not in tune.space.architectures")
        o["model.arch"] = choice.arch
        o["model.pretrained"] = choice.pretrained
        if choice.freeze_backbone_epochs is not None:
            o["model.freeze_backbone_epochs"] = choice.freeze_backbone_epochs
    for name, key in (
        ("optimizer", "train.optimizer"),
        ("lr", "train.lr"),
        ("weight_decay", "train.weight_decay"),
        ("batch_size", "train.batch_size"),
        ("label_smoothing", "train.label_smoothing"),
        ("scheduler", "train.scheduler"),
    ):
        if name in params:
            o[key] = params[name]
    s = params.get("augment_strength")
    if s is not None and s != 1.0:
        a = cfg.augment
        low, high = a.crop_scale
        o["augment.rotation_degrees"] = min(180.0, a.rotation_degrees * s)
        o["augment.crop_scale"] = [min(high, max(0.05, 1 - (1 - low) * s)), high]
        o["augment.color_jitter"] = min(1.0, a.color_jitter * s)
    if cfg.tune.epochs is not None:
        o["train.epochs"] = cfg.tune.epochs
    return o


def trial_config(cfg: PipelineConfig, params: dict[str, Any]) -> PipelineConfig:
    overrides = trial_overrides(cfg, params)
    return cfg.with_overrides(**overrides) if overrides else cfg
