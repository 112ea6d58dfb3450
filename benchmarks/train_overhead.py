"""What visionline's training code costs over plain PyTorch, on the bundled digits (CPU).

Two comparisons, each in paired rounds (both arms in every round, in random order):

``ratio_vs_plain_loop``: the inner loop alone. visionline's ``train_one_epoch`` vs a
minimal hand-written loop: same architecture and initial weights, the same decoded
tensors in memory, same batch size and shuffling, no schedule, no validation.

``fit_ratio_vs_plain_script``: whole training runs. ``fit(plan, store)`` (data
read from the store through the local cache and decoded per epoch, augmentation,
validation, a checkpoint and a metrics line every epoch, early-stopping bookkeeping,
the final model) vs the script a PyTorch user writes for the same work: a Dataset over
the store's image files with the same torchvision augmentation, the same model,
optimizer, one-cycle schedule and loss, a validation pass, ``torch.save`` of a
checkpoint and a JSON metrics line per epoch, the best weights saved at the end. Both
run ``--fit-epochs`` epochs from scratch per round on a warm cache, with the same
normalisation statistics given (so neither computes them). The ratio is throughput
(train images x epochs / wall seconds), ours over plain. Targets: >= 0.95 and >= 0.9.

About 3 minutes on 2 cores.

    python benchmarks/train_overhead.py [--epochs 10] [--rounds 5] [--fit-epochs 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (
    REPO,
    add_common_args,
    arm_order,
    paired,
    spread,
    write_digits_sample,
    write_result,
)
from visionline.config import PipelineConfig, load_config
from visionline.data.ingest import ingest
from visionline.model.architectures import build_model
from visionline.storage import LocalStore
from visionline.training.loop import fit, train_one_epoch
from visionline.training.optim import build_optimizer
from visionline.training.plan import plan_run


class _NoSchedule:
    """train_one_epoch's schedule argument, for a run without one."""

    def step_batch(self) -> None:
        pass


# --------------------------------------------------------------------------- inner loop
def plain_epoch(
    model: nn.Module, loader: DataLoader, opt: torch.optim.Optimizer, crit: nn.Module
) -> float:
    model.train()
    n, start = 0, time.perf_counter()
    for x, y in loader:
        opt.zero_grad()
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
        n += y.size(0)
    return n / (time.perf_counter() - start)


def loop_comparison(
    cfg: PipelineConfig,
    train: pd.DataFrame,
    store_root: Path,
    epochs: int,
    size: int,
    rng: random.Random,
) -> dict:
    classes = cfg.data.classes
    tf = v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize(size, antialias=True),
            v2.CenterCrop(size),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )
    # Decode once: both loops then train on identical in-memory tensors.
    xs = torch.stack([tf(Image.open(store_root / k).convert("L")) for k in train["key"]])
    ys = torch.tensor([classes.index(c) for c in train["label"]])
    ds = TensorDataset(xs, ys)
    torch.manual_seed(0)
    base = build_model(cfg.model, len(classes), cfg.data.channels, size)
    models = {"visionline": copy.deepcopy(base), "plain": copy.deepcopy(base)}
    opts = {arm: build_optimizer(m.parameters(), cfg.train) for arm, m in models.items()}
    crit = nn.CrossEntropyLoss()

    def loader(epoch: int) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=cfg.train.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(epoch),
        )

    def run(arm: str, epoch: int) -> float:
        if arm == "plain":
            return plain_epoch(models[arm], loader(epoch), opts[arm], crit)
        return train_one_epoch(
            models[arm],
            loader(epoch),
            crit,
            opts[arm],
            _NoSchedule(),
            torch.device("cpu"),
            epoch=epoch,
            log_every=cfg.train.log_every,
        )["images_per_s"]

    rates: dict[str, list[float]] = {"visionline": [], "plain": []}
    for epoch in range(epochs + 1):  # epoch 0 warms both up and is discarded
        got = {arm: run(arm, epoch) for arm in arm_order(rates, rng)}
        if epoch:
            for arm, v in got.items():
                rates[arm].append(v)
        print(
            f"loop epoch {epoch}: visionline {got['visionline']:.0f} img/s, "
            f"plain {got['plain']:.0f} img/s",
            flush=True,
        )
    return {
        "paired": paired(rates["visionline"], rates["plain"]),
        "visionline_images_per_s": round(statistics.median(rates["visionline"]), 1),
        "plain_images_per_s": round(statistics.median(rates["plain"]), 1),
        "train_images": len(ds),
    }


# --------------------------------------------------------------------------- whole runs
class FolderImages(Dataset):
    """The plain script's dataset: image files listed in the manifest, decoded with PIL."""

    def __init__(self, root: Path, rows: pd.DataFrame, classes: list[str], transform) -> None:
        self.paths = [root / k for k in rows["key"]]
        self.targets = [classes.index(c) for c in rows["label"]]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with Image.open(self.paths[i]) as im:
            return self.transform(im.convert("L")), self.targets[i]


def plain_script(cfg: PipelineConfig, store_root: Path, manifest: Path, out: Path) -> None:
    """The same training run as a plain PyTorch script: what fit() is compared against."""
    t, d, a = cfg.train, cfg.data, cfg.augment
    df = pd.read_parquet(manifest)
    df = df[df["decodable"]]
    classes = list(d.classes)
    norm = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(d.mean, d.std)]
    geometry = [
        v2.PILToTensor(),
        v2.Resize(d.image_size, antialias=True),
        v2.CenterCrop(d.image_size),
    ]
    train_tf = v2.Compose([*geometry, v2.RandomRotation(a.rotation_degrees), *norm])
    val_tf = v2.Compose([*geometry, *norm])
    train_ds = FolderImages(store_root, df[df["split"] == "train"], classes, train_tf)
    val_ds = FolderImages(store_root, df[df["split"] == "val"], classes, val_tf)
    torch.manual_seed(t.seed)
    model = build_model(cfg.model, len(classes), d.channels, d.image_size)
    opt = torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    train_loader = DataLoader(train_ds, batch_size=t.batch_size, shuffle=True)
    val_loader = DataLoader(val_ds, batch_size=t.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=t.lr, total_steps=t.epochs * len(train_loader)
    )
    crit = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
    out.mkdir(parents=True, exist_ok=True)
    best_loss, best_state = float("inf"), None
    for epoch in range(1, t.epochs + 1):
        model.train()
        for x, y in train_loader:
            opt.zero_grad()
            loss = crit(model(x), y)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        val_loss, correct = 0.0, 0
        with torch.no_grad():
            for x, y in val_loader:
                logits = model(x)
                val_loss += crit(logits, y).item() * len(y)
                correct += (logits.argmax(1) == y).sum().item()
        val_loss /= len(val_ds)
        if val_loss < best_loss:
            best_loss, best_state = val_loss, copy.deepcopy(model.state_dict())
        checkpoint = {
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
        }
        torch.save(checkpoint, out / f"checkpoint-{epoch}.pt")
        row = {"epoch": epoch, "val_loss": val_loss, "val_accuracy": correct / len(val_ds)}
        with (out / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
    torch.save(best_state, out / "model.pt")


def fit_comparison(
    cfg: PipelineConfig,
    store: LocalStore,
    manifest: Path,
    work: Path,
    rounds: int,
    n_train: int,
    rng: random.Random,
) -> dict:
    seconds: dict[str, list[float]] = {"visionline": [], "plain": []}

    def run(arm: str, r: int) -> float:
        t = time.perf_counter()
        if arm == "visionline":
            fit(plan_run(cfg, store, run_id=f"overhead-{r}"), store)
        else:
            plain_script(cfg, store.root, manifest, work / f"plain-{r}")
        return time.perf_counter() - t

    for r in range(rounds + 1):  # round 0 fills the cache, warms both up and is discarded
        got = {arm: run(arm, r) for arm in arm_order(seconds, rng)}
        if r:
            for arm, v in got.items():
                seconds[arm].append(v)
        print(
            f"fit round {r}/{rounds}: fit() {got['visionline']:.1f} s, "
            f"plain script {got['plain']:.1f} s",
            flush=True,
        )
    images = n_train * cfg.train.epochs
    rates = {arm: [images / s for s in v] for arm, v in seconds.items()}
    return {
        "paired": paired(rates["visionline"], rates["plain"]),
        "seconds": {arm: spread(v, 2) for arm, v in seconds.items()},
        "visionline_images_per_s": round(statistics.median(rates["visionline"]), 1),
        "plain_images_per_s": round(statistics.median(rates["plain"]), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=10, help="inner-loop epochs compared")
    ap.add_argument("--rounds", type=int, default=5, help="whole-run rounds compared")
    ap.add_argument("--fit-epochs", type=int, default=3, help="epochs per whole run")
    ap.add_argument("--image-size", type=int, default=28, help="inner-loop image size")
    ap.add_argument("--seed", type=int, default=0)
    add_common_args(ap)
    args = ap.parse_args()
    per_class = None
    if args.smoke:
        args.epochs, args.rounds, args.fit_epochs, per_class = 1, 2, 1, 30
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_digits_sample(tmp / "digits", per_class)
        store = LocalStore(tmp / "store")
        ref = ingest(store, str(tmp / "digits"), "digits", progress=False).ref
        manifest = store.root / ref.manifest_key
        df = pd.read_parquet(manifest)
        train = df[(df["split"] == "train") & df["decodable"]]
        cfg = load_config(REPO / "configs" / "digits.yaml").with_overrides(
            store=store.uri,
            **{
                "data.cache_dir": str(tmp / "cache"),
                "train.epochs": args.fit_epochs,
                "train.early_stopping": None,
                # given, as a user script would hard-code them: neither arm computes them
                "data.mean": [0.3],
                "data.std": [0.4],
            },
        )
        loop = loop_comparison(cfg, train, store.root, args.epochs, args.image_size, rng)
        whole = fit_comparison(cfg, store, manifest, tmp / "plain", args.rounds, len(train), rng)

    write_result(
        "train_overhead",
        {
            "ratio_vs_plain_loop": loop["paired"]["median"],
            "fit_ratio_vs_plain_script": whole["paired"]["median"],
            "loop_paired": loop["paired"],
            "fit_paired": whole["paired"],
            "visionline_images_per_s": loop["visionline_images_per_s"],
            "plain_images_per_s": loop["plain_images_per_s"],
            "fit_images_per_s": whole["visionline_images_per_s"],
            "plain_script_images_per_s": whole["plain_images_per_s"],
            "fit_run_seconds": whole["seconds"],
            "epochs": args.epochs,
            "rounds": args.rounds,
            "fit_epochs": args.fit_epochs,
            "batch_size": cfg.train.batch_size,
            "model": cfg.model.arch,
            "loop_image_size": args.image_size,
            "fit_image_size": cfg.data.image_size,
            "train_images": loop["train_images"],
            "targets": {"ratio_vs_plain_loop": 0.95, "fit_ratio_vs_plain_script": 0.9},
        },
        args.results_dir,
        smoke=args.smoke,
    )


if __name__ == "__main__":
    main()
