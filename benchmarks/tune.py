"""Model selection on the bundled digits: the search of configs/digits.yaml (the budget
of `visionline tune --trials 8 --timeout 600`) against the default config's own run,
and against the same trials run without pruning.

Three stores, so no arm reuses another's runs:

- default: configs/digits.yaml trained as `visionline train` trains it;
- pruned: the search as configured (median pruner);
- unpruned: the very trials the pruned search runs (same parameters, same order,
  enqueued), with pruning off: what pruning saves is the difference in wall time.

The unpruned arm replays the trials the configured search draws (drawn ahead, see
planned_trials), so the two search arms can run in random order. Figures: trials, pruned, wall_s,
best_val_accuracy, default_val_accuracy, wall_s_no_pruning (and the unpruned arm's best),
the load average around each arm (the figures are only comparable on a quiet machine).

    python benchmarks/tune.py [--trials 8] [--timeout 600] [--epochs N] [--per-class N]
                              [--smoke] [--results-dir DIR]

Anything less than the configured search (fewer trials, fewer epochs, fewer images, a
shorter timeout, ``--smoke``) is recorded as ``"smoke": true``: not a figure to cite.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import add_common_args, write_result
from visionline.backends import compute_backend
from visionline.config import PipelineConfig, load_config
from visionline.data.ingest import ingest
from visionline.data.samples import write_digits
from visionline.evaluation import ensure_evaluated
from visionline.evaluation.gate import gate_run
from visionline.model.runs import load_run_info
from visionline.serving.packaging import package_run
from visionline.storage import LocalStore
from visionline.training.plan import plan_run
from visionline.tuning import TuneResult, base_params, open_study, suggest, tune

REPO = Path(__file__).resolve().parents[1]


def _kept_val_accuracy(store: LocalStore, run_id: str) -> float:
    """Validation accuracy of the weights a run kept (its best epoch): what ships."""
    info = load_run_info(store, run_id)
    return next(r for r in info["history"] if r["epoch"] == info["best_epoch"])["val_accuracy"]


def _store(tmp: Path, name: str, images: Path) -> LocalStore:
    store = LocalStore(tmp / name / "store")
    ingest(store, str(images), "digits", progress=False)
    return store


def _config(store: LocalStore, tmp: Path, overrides: dict) -> PipelineConfig:
    cfg = load_config(REPO / "configs" / "digits.yaml")
    return cfg.with_overrides(
        store=store.uri, **{"data.cache_dir": str(tmp / "cache"), **overrides}
    )


def planned_trials(cfg: PipelineConfig) -> list[dict]:
    """The parameters the configured search draws, trial by trial. Below TPE's ten
    startup trials it samples independently of results, so these are the pruned arm's
    trials whatever their outcomes (checked: ``same_trials``)."""
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=cfg.tune.seed)
    )
    study.enqueue_trial(base_params(cfg)[0])
    return [suggest(study.ask(), cfg.tune.space) for _ in range(cfg.tune.n_trials)]


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def parse_args() -> tuple[argparse.Namespace, dict]:
    """The command line, and the config overrides every arm trains with."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--epochs", type=int, help="train.epochs (default: the config's)")
    ap.add_argument("--per-class", type=int, help="a smaller digits set, for a smoke run")
    ap.add_argument("--seed", type=int, default=0, help="order of the two search arms")
    ap.add_argument("--note", help="recorded with the figures (e.g. what else ran on the machine)")
    add_common_args(ap)
    args = ap.parse_args()
    if args.smoke:  # two trials of one epoch on five images per class
        args.trials, args.epochs, args.per_class = 2, 1, args.per_class or 5
    overrides = {"tune.n_trials": args.trials, "tune.timeout_s": args.timeout}
    if args.epochs:
        overrides["train.epochs"] = args.epochs
    if args.per_class:  # a handful of test images per class: the gate's thresholds go too
        overrides |= {"validation.min_per_class": 1, "gate.min_accuracy": 0.5}
        overrides |= {"gate.min_macro_f1": 0.5, "gate.min_class_recall": 0.0}
    if args.smoke:  # one epoch on a few images learns little: the gate only has to run
        overrides |= {"gate.min_accuracy": 0.0, "gate.min_macro_f1": 0.0}
    return args, overrides


def _digits(tmp: Path, per_class: int | None) -> Path:
    images = tmp / "digits"
    write_digits(images)
    if per_class:
        for label in images.iterdir():
            for f in sorted(label.iterdir())[per_class:]:
                f.unlink()
    return images


def default_arm(tmp: Path, images: Path, overrides: dict) -> dict:
    """The default config, trained as `visionline train` trains it."""
    store = _store(tmp, "default", images)
    cfg = _config(store, tmp, overrides)
    plan = plan_run(cfg, store)
    start = time.perf_counter()
    compute_backend(cfg).train(plan, store)
    seconds = time.perf_counter() - start
    return {"run_id": plan.run_id, "s": seconds, "acc": _kept_val_accuracy(store, plan.run_id)}


def pruned_arm(cfg: PipelineConfig, store: LocalStore) -> dict:
    """The search as configured, then what `visionline tune` does next."""
    load = _load()
    start = time.perf_counter()
    result = tune(cfg, store, backend=compute_backend(cfg))
    search_s = time.perf_counter() - start
    # what `visionline tune` does next: evaluate, gate, package the best run
    ensure_evaluated(store, result.best_run_id)
    gate_run(store, result.best_run_id)
    package_run(store, result.best_run_id)
    return {
        "result": result,
        "wall_s": search_s,
        "command_s": time.perf_counter() - start,
        "load": (load, _load()),
    }


def unpruned_arm(tmp: Path, images: Path, overrides: dict, planned: list[dict]) -> dict:
    """The pruned arm's very trials, enqueued, with pruning off."""
    store = _store(tmp, "unpruned", images)
    cfg = _config(store, tmp, {**overrides, "tune.pruner.kind": "none", "tune.include_base": False})
    study, _ = open_study(cfg, store, plan_run(cfg, store).dataset)
    for params in planned:
        study.enqueue_trial(params)
    load = _load()
    start = time.perf_counter()
    result = tune(cfg, store, backend=compute_backend(cfg))
    return {
        "result": result,
        "wall_s": time.perf_counter() - start,
        "load": (load, _load()),
    }


def figures(
    args: argparse.Namespace,
    default: dict,
    arms: dict[str, dict],
    order: list[str],
    planned: list[dict],
    pruned_cfg: PipelineConfig,
) -> dict:
    """What tune.json holds."""
    pruned: TuneResult = arms["pruned"]["result"]
    unpruned: TuneResult = arms["unpruned"]["result"]
    base = pruned.trials[0]
    return {
        "trials": len(pruned.trials),
        "pruned": pruned.count("PRUNED"),
        "wall_s": round(arms["pruned"]["wall_s"], 1),
        "command_s": round(arms["pruned"]["command_s"], 1),
        "timeout_s": args.timeout,
        # the search, then what `visionline tune` does next (evaluate, gate, package)
        "within_budget": arms["pruned"]["command_s"] <= args.timeout and pruned.finished,
        "best_val_accuracy": pruned.best["value"],
        "best_params": pruned.best["params"],
        "default_val_accuracy": default["acc"],
        "default_train_s": round(default["s"], 1),
        "base_trial_is_default_run": base["base"] and base["run_id"] == default["run_id"],
        "wall_s_no_pruning": round(arms["unpruned"]["wall_s"], 1),
        "best_val_accuracy_no_pruning": unpruned.best["value"],
        "pruned_no_pruning": unpruned.count("PRUNED"),  # 0: the arm really ran them all
        "epochs_run": sum(t["epochs"] for t in pruned.trials),
        "epochs_run_no_pruning": sum(t["epochs"] for t in unpruned.trials),
        "pruning_speedup": round(arms["unpruned"]["wall_s"] / arms["pruned"]["wall_s"], 2),
        "same_trials": [t["params"] for t in pruned.trials] == planned,
        "arm_order": order,
        "load_average_1m": {arm: arms[arm]["load"] for arm in arms},
        "digits_per_class": args.per_class or "all",
        "epochs": args.epochs or "config",
        "parallel_trials": pruned_cfg.tune.parallel or "auto",
        "note": args.note,
    }


def reduced(args: argparse.Namespace) -> bool:
    """Anything less than the configured search on all the digits is a smoke run: its
    figures say the script works, never what the search finds or costs."""
    return bool(
        args.smoke or args.per_class or args.epochs or args.trials != 8 or args.timeout < 600
    )


def main() -> None:
    args, overrides = parse_args()
    with tempfile.TemporaryDirectory(prefix="visionline-bench-tune-") as t:
        tmp = Path(t)
        images = _digits(tmp, args.per_class)
        default = default_arm(tmp, images, overrides)
        pruned_store = _store(tmp, "pruned", images)
        pruned_cfg = _config(pruned_store, tmp, overrides)
        planned = planned_trials(pruned_cfg)
        order = ["pruned", "unpruned"]
        random.Random(args.seed).shuffle(order)
        arms: dict[str, dict] = {}
        for arm in order:
            if arm == "pruned":
                arms[arm] = pruned_arm(pruned_cfg, pruned_store)
            else:
                arms[arm] = unpruned_arm(tmp, images, overrides, planned)
        shutil.rmtree(tmp / "cache", ignore_errors=True)
    write_result(
        "tune",
        figures(args, default, arms, order, planned, pruned_cfg),
        args.results_dir,
        smoke=reduced(args),
    )


if __name__ == "__main__":
    main()
