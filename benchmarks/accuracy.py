"""simple_cnn on the bundled digits (CPU), over several seeds, vs a tuned SVC on the same split.

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

    python benchmarks/accuracy.py [--seeds 5] [--epochs 15] [--cv-folds 5]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.svm import SVC

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import REPO, add_common_args, sig, write_digits_sample, write_result
from visionline.config import PipelineConfig, load_config
from visionline.data.ingest import ingest
from visionline.data.manifest import DatasetRef, read_manifest
from visionline.evaluation import evaluate_run, load_predictions
from visionline.evaluation.gate import mcnemar
from visionline.storage import LocalStore
from visionline.training.loop import fit
from visionline.training.plan import plan_run

C_GRID = (0.3, 1, 3, 10, 30, 100)
# multiples of sklearn's gamma='scale' (1 / (n_features * X.var())): below and above it
GAMMA_FACTORS = (1 / 10, 1 / 3, 1, 3, 10)


def _pixels(store: LocalStore, keys: list[str]) -> np.ndarray:
    return np.stack(
        [
            np.asarray(Image.open(io.BytesIO(store.get_bytes(k))), dtype=np.float32).ravel() / 255
            for k in keys
        ]
    )


def tune_svc(
    X: np.ndarray, y: np.ndarray, folds: int, c_grid: tuple, gamma_factors: tuple, seed: int = 0
):
    """Grid search by stratified k-fold CV; returns the refitted SVC and what it chose."""
    scale = 1.0 / (X.shape[1] * X.var())
    gammas = [scale * f for f in gamma_factors]
    search = GridSearchCV(
        SVC(kernel="rbf"),
        {"C": list(c_grid), "gamma": gammas},
        cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
        n_jobs=1,  # the benchmark, not the grid, owns the cores
        refit=True,
    )
    search.fit(X, y)
    best = search.best_params_
    factor = gamma_factors[gammas.index(best["gamma"])]
    edge = []
    if best["C"] in (c_grid[0], c_grid[-1]):
        edge.append(f"C={best['C']}")
    if factor in (gamma_factors[0], gamma_factors[-1]):
        edge.append(f"gamma={factor:g}x scale")
    params = {
        "C": best["C"],
        "gamma": round(float(best["gamma"]), 6),
        "gamma_vs_scale": round(factor, 4),
        "cv_accuracy": round(float(search.best_score_), 4),
    }
    return search.best_estimator_, params, edge


def parse_args() -> tuple[argparse.Namespace, tuple, tuple, int | None]:
    """The command line, the SVC's grid (C, gamma factors) and the digits per class."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--cv-folds", type=int, default=5)
    add_common_args(ap)
    args = ap.parse_args()
    c_grid, gamma_factors = C_GRID, GAMMA_FACTORS
    per_class = None
    if args.smoke:
        per_class = 30
        args.seeds, args.epochs, args.cv_folds = 2, 1, 2
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
        _pixels(store, fit_rows["key"].tolist()),
        fit_rows["label"].to_numpy(),
        folds,
        c_grid,
        gamma_factors,
    )
    svc_pred = svc.predict(_pixels(store, test_rows["key"].tolist()))
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


def main() -> None:
    args, c_grid, gamma_factors, per_class = parse_args()
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
    write_result(
        "accuracy",
        {
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
            "train_seconds_per_seed": round(
                statistics.median(c["seconds"] for c in cnn.values()), 1
            ),
            "svc_seconds": round(svc_seconds, 1),
        },
        args.results_dir,
        smoke=args.smoke,
    )


if __name__ == "__main__":
    main()
