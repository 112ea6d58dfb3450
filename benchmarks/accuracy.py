"""Test accuracy on digits and Fashion-MNIST (CPU), over seeds, vs a tuned SVC on the same split.

The CNN is trained with ``fit()`` once per seed (``train.seed`` 0..N-1, everything else
as in ``configs/digits.yaml`` except the epoch count, see below) and evaluated on the
test split: ``cnn_seeds`` holds each seed's accuracy, ``cnn_mean_accuracy`` and
``cnn_std`` (sample standard deviation) their summary.

The baseline is scikit-learn's SVC (RBF kernel) on the raw pixels, tuned the way its
docs recommend: a grid over C and gamma by stratified k-fold cross-validation on
train+val (the images the CNN learns and selects its epoch on), gamma on both sides of
sklearn's ``'scale'`` heuristic, then refitted on train+val. If the best value sits on
an edge of the grid the result says so (``svc_grid_edge``).

The two are compared on the same test images with McNemar's exact test
(``visionline.evaluation.gate.mcnemar``): one seed's CNN against the SVC, per seed;
``mcnemar_p`` is the median over seeds, each seed's discordant counts are in
``mcnemar_per_seed``. A p-value far above 0.05 means the test set cannot tell them apart.

The epoch count is 15 by default, not the config's 30, to keep five seeds within about
four minutes on two cores (the config's one-cycle schedule spans whatever count is set);
``--epochs 30`` trains as ``make demo`` does, in about twice the time.

Fashion-MNIST (``--datasets``, both by default) is the unsaturated second section,
``fashion_mnist``: ``simple_cnn`` and ``cnn3`` over ``--fmnist-seeds`` seeds against a
CV-tuned SVC (``benchmarks/accuracy_fmnist.py`` says how). It needs the tarball
``make fashion-mnist`` caches. A run of one dataset keeps the other's figures, each
section with the revision it was measured at (``benchmarks/report.py`` marks the
result by the least current).

    python benchmarks/accuracy.py [--seeds 5] [--epochs 15] [--cv-folds 5]
    python benchmarks/accuracy.py --datasets fashion-mnist [--fmnist-seeds 3] [--fmnist-epochs 10]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (
    REPO,
    add_common_args,
    measurement_meta,
    read_result,
    sig,
    write_digits_sample,
    write_result,
)
from benchmarks.accuracy_fmnist import fashion_section
from benchmarks.svc_baseline import C_GRID, GAMMA_FACTORS, pixels, tune_svc
from visionline.config import PipelineConfig, load_config
from visionline.data import fashion_mnist
from visionline.data.ingest import ingest
from visionline.data.manifest import DatasetRef, read_manifest
from visionline.evaluation import evaluate_run, load_predictions
from visionline.evaluation.gate import mcnemar
from visionline.storage import LocalStore
from visionline.training.loop import fit
from visionline.training.plan import plan_run


def parse_args() -> tuple[argparse.Namespace, tuple, tuple, int | None]:
    """The command line, the SVC's grid (C, gamma factors) and the digits per class."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--cv-folds", type=int, default=5)
    ap.add_argument(
        "--datasets",
        default="digits,fashion-mnist",
        choices=["digits", "fashion-mnist", "digits,fashion-mnist"],
        help="which sections to measure; the others keep their figures (and revision)",
    )
    ap.add_argument("--fashion-mnist", default=str(REPO / fashion_mnist.CACHED_TARBALL))
    ap.add_argument("--checksums", help="a JSON map of file name -> SHA-256 (test sources)")
    ap.add_argument("--fmnist-seeds", type=int, default=3)
    ap.add_argument("--fmnist-epochs", type=int, default=10)
    add_common_args(ap)
    args = ap.parse_args()
    c_grid, gamma_factors = C_GRID, GAMMA_FACTORS
    per_class = None
    if args.smoke:
        per_class = 30
        args.seeds, args.epochs, args.cv_folds = 2, 1, 2
        args.fmnist_seeds, args.fmnist_epochs = 2, 1
        c_grid, gamma_factors = (1, 10), (1 / 3, 1, 3)
    return args, c_grid, gamma_factors, per_class


def cnn_seed(
    base: PipelineConfig, store: LocalStore, ref: DatasetRef, seed: int
) -> tuple[dict, dict[str, bool]]:
    """One seed of the CNN trained and tested: its figures, and source -> right or not."""
    t = time.perf_counter()
    run_id = f"seed-{seed}"
    cfg = base.with_overrides(**{"train.seed": seed})
    result = fit(plan_run(cfg, store, ref, run_id=run_id), store)
    metrics = evaluate_run(store, run_id)
    preds = load_predictions(store, run_id)
    correct = dict(zip(preds["source"], preds["correct"].astype(bool), strict=True))
    figures = {
        "accuracy": metrics["accuracy"],
        "epochs_run": result.epochs_run,
        "seconds": time.perf_counter() - t,
    }
    print(
        f"seed {seed}: accuracy {metrics['accuracy']:.4f} after {result.epochs_run} "
        f"epochs ({figures['seconds']:.0f} s)",
        flush=True,
    )
    return figures, correct


def svc_arm(
    store: LocalStore, ref: DatasetRef, folds: int, c_grid: tuple, gamma_factors: tuple
) -> tuple[dict[str, bool], dict, list[str], float]:
    """The tuned SVC on the same split: source -> right or not, what the search chose,
    which choices sit on the grid's edge, and the seconds it all took."""
    m = read_manifest(store, ref)
    m = m[m["decodable"]]
    fit_rows = m[m["split"].isin(["train", "val"])]
    test_rows = m[m["split"] == "test"]
    t = time.perf_counter()
    svc, svc_params, edge = tune_svc(
        pixels(store, fit_rows["key"].tolist()),
        fit_rows["label"].to_numpy(),
        folds,
        c_grid,
        gamma_factors,
    )
    svc_pred = svc.predict(pixels(store, test_rows["key"].tolist()))
    svc_seconds = time.perf_counter() - t
    svc_correct = dict(
        zip(test_rows["source"], svc_pred == test_rows["label"].to_numpy(), strict=True)
    )
    return svc_correct, svc_params, edge, svc_seconds


def mcnemar_per_seed(
    svc_correct: dict[str, bool], correct: dict[int, dict[str, bool]], seeds: int
) -> list[dict]:
    """McNemar's test of the SVC against each CNN seed, on the same test images."""
    sources = sorted(svc_correct)
    per_seed = []
    for seed in range(seeds):
        if sorted(correct[seed]) != sources:
            raise RuntimeError(f"seed {seed}: the CNN and the SVC were tested on different images")
        only_svc, only_cnn, p = mcnemar(
            np.array([svc_correct[s] for s in sources]),
            np.array([correct[seed][s] for s in sources]),
        )
        per_seed.append(
            {"seed": seed, "only_svc_right": only_svc, "only_cnn_right": only_cnn, "p": sig(p)}
        )
    return per_seed


def digits_section(args: argparse.Namespace, c_grid, gamma_factors, per_class) -> dict:
    """The digits figures (the top level of accuracy.json, as before Fashion-MNIST)."""
    with tempfile.TemporaryDirectory() as tmp:
        write_digits_sample(Path(tmp) / "digits", per_class)
        store = LocalStore(Path(tmp) / "store")
        ref = ingest(store, str(Path(tmp) / "digits"), "digits", progress=False).ref
        base = load_config(REPO / "configs" / "digits.yaml").with_overrides(
            store=store.uri,
            **{"data.cache_dir": str(Path(tmp) / "cache"), "train.epochs": args.epochs},
        )
        cnn: dict[int, dict] = {}
        correct: dict[int, dict[str, bool]] = {}
        for seed in range(args.seeds):
            cnn[seed], correct[seed] = cnn_seed(base, store, ref, seed)
        svc_correct, svc_params, edge, svc_seconds = svc_arm(
            store, ref, args.cv_folds, c_grid, gamma_factors
        )
    sources = sorted(svc_correct)
    svc_acc = float(np.mean([svc_correct[s] for s in sources]))
    per_seed = mcnemar_per_seed(svc_correct, correct, args.seeds)
    accs = [cnn[s]["accuracy"] for s in range(args.seeds)]
    return {
        "cnn_seeds": [round(a, 4) for a in accs],
        "cnn_mean_accuracy": round(statistics.mean(accs), 4),
        "cnn_std": round(statistics.stdev(accs), 4) if len(accs) > 1 else None,
        "cnn_min_accuracy": round(min(accs), 4),
        "svc_accuracy": round(svc_acc, 4),
        "svc_params": svc_params,
        "svc_grid": {"C": list(c_grid), "gamma_vs_scale": [round(f, 4) for f in gamma_factors]},
        "svc_grid_edge": edge or None,
        "mcnemar_p": sig(statistics.median(r["p"] for r in per_seed)),
        "mcnemar_per_seed": per_seed,
        "test_images": len(sources),
        "cv_folds": args.cv_folds,
        "epochs": args.epochs,
        "epochs_run": [cnn[s]["epochs_run"] for s in range(args.seeds)],
        "train_seconds_per_seed": round(statistics.median(c["seconds"] for c in cnn.values()), 1),
        "svc_seconds": round(svc_seconds, 1),
    }


def main() -> None:
    args, c_grid, gamma_factors, per_class = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    datasets = args.datasets.split(",")
    previous = read_result("accuracy", args.results_dir)
    figures: dict = {}
    if "fashion-mnist" in datasets:
        tarball = Path(args.fashion_mnist)
        if not tarball.is_file():
            sys.exit(f"--fashion-mnist {tarball}: no such file; {fashion_mnist.how_to_get()}")
        keep = "digits" not in datasets

        def write_so_far(section: dict) -> None:
            """Each finished seed is on disk: a run stopped early keeps what it measured."""
            figures["fashion_mnist"] = section | measurement_meta(args.smoke)
            if keep:
                kept = {k: v for k, v in previous.items() if k != "fashion_mnist"}
                write_result("accuracy", kept | figures, args.results_dir, keep_meta=bool(kept))

        with tempfile.TemporaryDirectory() as tmp:
            section = fashion_section(
                tarball,
                Path(tmp),
                seeds=args.fmnist_seeds,
                epochs=args.fmnist_epochs,
                folds=args.cv_folds,
                smoke=args.smoke,
                sha256=json.loads(Path(args.checksums).read_text()) if args.checksums else None,
                on_seed=write_so_far,
            )
        for arch, m in section["models"].items():
            print(
                f"fashion-mnist {arch}: {m['mean_accuracy']} +- {m['seed_std']} over seeds, "
                f"95% interval {m['interval_95']}; McNemar vs SVC p {m['mcnemar_vs_svc_p']}"
            )
        print(f"fashion-mnist SVC: {section['svc_accuracy']}; goal met: {section['goal_met']}")
    elif "fashion_mnist" in previous:
        figures["fashion_mnist"] = previous["fashion_mnist"]
    if "digits" in datasets:
        figures = digits_section(args, c_grid, gamma_factors, per_class) | figures
        write_result("accuracy", figures, args.results_dir, smoke=args.smoke)
    # else: written after each seed, the digits figures kept with their revision and machine


if __name__ == "__main__":
    main()
