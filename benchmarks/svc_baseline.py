"""The scikit-learn baseline of ``benchmarks/accuracy.py``: an RBF SVC on raw pixels,
its C and gamma chosen by stratified k-fold cross-validation."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.svm import SVC

from visionline.storage import LocalStore

C_GRID = (0.3, 1, 3, 10, 30, 100)
# multiples of sklearn's gamma='scale' (1 / (n_features * X.var())): below and above it
GAMMA_FACTORS = (1 / 10, 1 / 3, 1, 3, 10)


def pixels(store: LocalStore, keys: list[str]) -> np.ndarray:
    return np.stack(
        [
            np.asarray(Image.open(io.BytesIO(store.get_bytes(k))), dtype=np.float32).ravel() / 255
            for k in keys
        ]
    )


def tune_svc(
    X: np.ndarray,
    y: np.ndarray,
    folds: int,
    c_grid: tuple,
    gamma_factors: tuple,
    seed: int = 0,
    refit: bool = True,
):
    """Grid search by stratified k-fold CV; returns the refitted SVC (None without
    ``refit``) and what it chose."""
    scale = 1.0 / (X.shape[1] * X.var())
    gammas = [scale * f for f in gamma_factors]
    search = GridSearchCV(
        SVC(kernel="rbf"),
        {"C": list(c_grid), "gamma": gammas},
        cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
        n_jobs=1,  # the benchmark, not the grid, owns the cores
        refit=refit,
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
    return (search.best_estimator_ if refit else None), params, edge
