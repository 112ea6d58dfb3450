"""Does labelling the images the queue chooses pay more than labelling random ones?

Simulated labelling rounds on Fashion-MNIST (issue #19, item 6): start from 1,000
labelled images drawn at random from the pool, then six rounds that each add 500
labels and retrain from scratch. The pool is the official training split minus the
5,000 validation images ``estimate.py`` holds out (a random ``--al-pool`` of it, so
that scoring the pool every round stays cheap on a shared CPU); every model is scored
on the official 10,000 test images.

The strategies are the product's own code: each round the unlabelled pool is run
through the model, described by monitoring's ``describe_batch`` (confidence, margin,
entropy, projected embedding, as captures are), ranked by ``labels.informativeness``
and picked by ``labels.select_diverse`` with the queue's default near-duplicate
distance, exactly as ``visionline label-queue`` picks. ``random`` draws uniformly.

Within a seed every strategy starts from the same 1,000 images and every round's model
starts from the same initial weights, so strategies are compared paired. The model is
a small CNN (two strided convolutions, ~0.1 M parameters) trained for a fixed number of
epochs: ``simple_cnn`` costs ~8 ms per training image on this shared 2-core box, which
would take hours for 2 seeds x 4 strategies x 7 rounds; the figures are for this model.

Reported: accuracy against labels per strategy and seed, and the labels each strategy
needs (linearly interpolated between rounds) to reach the accuracy random reaches at
the end; ``None`` where it never does within the budget.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
from torch import nn

from benchmarks._common import git_revision, machine
from visionline.data.transforms import Preprocessing
from visionline.monitoring.features import describe_batch, make_projection
from visionline.monitoring.labels import STRATEGIES, informativeness, select_diverse

ARMS = (*STRATEGIES, "random")
DEDUP = 0.1  # label-queue's default --dedup
PRE = Preprocessing(28, 1, (0.286,), (0.353,))
FULL = {"start": 1000, "step": 500, "rounds": 6, "pool": 20_000, "epochs": 10, "val": 5000}
SMOKE = {"start": 20, "step": 10, "rounds": 2, "pool": 80, "epochs": 1, "val": 20}


class TinyCNN(nn.Module):
    """Two strided convolutions and a 64-unit hidden layer (the queue's embedding)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 5, stride=2, padding=2),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, 64),
            nn.ReLU(),
        )
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    return (x - PRE.mean[0]) / PRE.std[0]


def fit(x: torch.Tensor, y: torch.Tensor, epochs: int, init_seed: int) -> TinyCNN:
    """From the same initial weights for every strategy (``init_seed``), fixed epochs."""
    torch.manual_seed(init_seed)
    model = TinyCNN()
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    gen = torch.Generator().manual_seed(init_seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for b in range(0, len(x), 64):
            idx = order[b : b + 64]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.inference_mode()
def run_model(model: TinyCNN, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    probs, feats = [], []
    for b in range(0, len(x), 1000):
        f = model.features(x[b : b + 1000])
        feats.append(f)
        probs.append(model.head(f).softmax(1))
    return torch.cat(probs), torch.cat(feats)


def accuracy(model: TinyCNN, x: torch.Tensor, y: torch.Tensor) -> float:
    probs, _ = run_model(model, x)
    return float((probs.argmax(1) == y).float().mean())


def choose(
    strategy: str,
    model: TinyCNN,
    x: torch.Tensor,
    unlabelled: np.ndarray,
    k: int,
    rng: np.random.Generator,
    projection: torch.Tensor,
) -> np.ndarray:
    """Pool indices of the next ``k`` labels: the product's queue ranking, or random."""
    if strategy == "random":
        return rng.choice(unlabelled, k, replace=False)
    xu = x[unlabelled]
    probs, feats = run_model(model, xu)
    described = describe_batch(xu, probs, feats, PRE, projection)
    frame = pd.DataFrame({c: described[c] for c in ("confidence", "margin", "entropy")})
    scores = informativeness(frame, strategy)
    picked = select_diverse(scores, described["embedding"], k, DEDUP)
    if len(picked) < k:  # near-duplicates left too few: the next best, so budgets match
        rest = [int(i) for i in np.argsort(-scores, kind="stable") if i not in set(picked)]
        picked += rest[: k - len(picked)]
    return unlabelled[np.asarray(picked, dtype=np.int64)]


def labels_to_reach(labels: list[int], curve: list[float], target: float) -> float | None:
    """Labels at which ``curve`` first reaches ``target``, interpolated between rounds."""
    for i, acc in enumerate(curve):
        if acc >= target:
            if i == 0:
                return float(labels[0])
            a0, n0 = curve[i - 1], labels[i - 1]
            return round(n0 + (target - a0) / (acc - a0) * (labels[i] - n0), 1)
    return None


def simulate_seed(data: tuple, sizes: dict, seed: int) -> dict[str, list[float]]:
    """One seed: every arm's test accuracy after each round."""
    pool_x, pool_y, test_x, test_y = data
    rng = np.random.default_rng(seed)
    start = rng.choice(len(pool_y), sizes["start"], replace=False)
    projection = torch.from_numpy(make_projection(64, 32, 0))
    first = fit(pool_x[start], pool_y[start], sizes["epochs"], seed * 1000)
    first_acc = accuracy(first, test_x, test_y)
    curves = {}
    for arm in ARMS:
        t0, arm_rng = time.perf_counter(), np.random.default_rng(seed + 1)
        labelled, model, curve = start, first, [first_acc]
        for r in range(1, sizes["rounds"] + 1):
            unlabelled = np.setdiff1d(np.arange(len(pool_y)), labelled)
            new = choose(arm, model, pool_x, unlabelled, sizes["step"], arm_rng, projection)
            labelled = np.concatenate([labelled, new])
            model = fit(pool_x[labelled], pool_y[labelled], sizes["epochs"], seed * 1000 + r)
            curve.append(round(accuracy(model, test_x, test_y), 4))
        curves[arm] = curve
        print(
            f"seed {seed} {arm:<17} "
            + " ".join(f"{a:.3f}" for a in curve)
            + f"  ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    return curves


def summarise(labels: list[int], per_seed: list[dict[str, list[float]]]) -> dict:
    """Curves with their spread, labels to random's final accuracy, the best arm."""
    target_per_seed = [c["random"][-1] for c in per_seed]
    target = float(np.mean(target_per_seed))
    arms = {}
    for arm in ARMS:
        runs = np.array([c[arm] for c in per_seed])
        mean = [round(float(v), 4) for v in runs.mean(0)]
        arms[arm] = {
            "accuracy_per_seed": runs.tolist(),
            "accuracy_mean": mean,
            "accuracy_min": runs.min(0).round(4).tolist(),
            "accuracy_max": runs.max(0).round(4).tolist(),
            "final_minus_random_per_seed": [
                round(c[arm][-1] - c["random"][-1], 4) for c in per_seed
            ],
            "labels_to_random_final": labels_to_reach(labels, mean, target),
            "labels_to_random_final_per_seed": [
                labels_to_reach(labels, c[arm], t)
                for c, t in zip(per_seed, target_per_seed, strict=True)
            ],
        }

    def rank(arm: str) -> tuple[float, float]:
        need = arms[arm]["labels_to_random_final"]
        return (need if need is not None else float("inf"), -arms[arm]["accuracy_mean"][-1])

    best = min(STRATEGIES, key=rank)
    beats = all(d > 0 for d in arms[best]["final_minus_random_per_seed"])
    return {
        "labels": labels,
        "random_final_accuracy": round(target, 4),
        "random_final_accuracy_per_seed": target_per_seed,
        "arms": arms,
        "best_strategy": best,
        "best_beats_random_every_seed": beats,
        "ranking": sorted(ARMS, key=rank),
    }


def run(arrays: tuple, seeds: int, smoke: bool, pool: int | None, epochs: int | None) -> dict:
    """The simulation over ``seeds`` seeds; ``arrays`` is (train x, train y, test x, test y)."""
    t0 = time.perf_counter()
    x, y, test_x, test_y = arrays
    sizes = dict(SMOKE if smoke else FULL)
    sizes["pool"] = pool or sizes["pool"]
    sizes["epochs"] = epochs or sizes["epochs"]
    order = np.random.default_rng(0).permutation(len(y))  # estimate.py's split
    candidates = order[: len(y) - sizes["val"]]
    sizes["pool"] = min(sizes["pool"], len(candidates))
    pool = np.random.default_rng(1).choice(candidates, sizes["pool"], replace=False)
    data = (
        to_tensor(x[pool]),
        torch.from_numpy(y[pool]).long(),
        to_tensor(test_x),
        torch.from_numpy(test_y).long(),
    )
    labels = [sizes["start"] + r * sizes["step"] for r in range(sizes["rounds"] + 1)]
    per_seed = [simulate_seed(data, sizes, s) for s in range(seeds)]
    return {
        "setup": {
            **sizes,
            "seeds": seeds,
            "test_images": len(test_y),
            "model": "TinyCNN (benchmarks/active_learning.py), Adam 2e-3, batch 64",
            "selection": "describe_batch -> labels.informativeness -> labels.select_diverse"
            f" (dedup {DEDUP})",
        },
        **summarise(labels, per_seed),
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": machine(),
        "git_revision": git_revision(),
    }
