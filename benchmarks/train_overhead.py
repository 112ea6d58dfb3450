"""visionline's train_one_epoch vs a minimal hand-written PyTorch loop.

Same model architecture and initial weights, same tensors, same batch size and the
same shuffling; the two loops alternate so machine noise hits both alike. Reports
the median epoch throughput ratio (target >= 0.95).

    python benchmarks/train_overhead.py [--epochs 10]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import write_result
from visionline.config import load_config
from visionline.data.ingest import ingest
from visionline.data.samples import write_digits
from visionline.data.transforms import eval_transform
from visionline.models import build_model
from visionline.storage import LocalStore
from visionline.training import LRSchedule, build_optimizer, prepare_data, train_one_epoch

REPO = Path(__file__).resolve().parents[1]


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--image-size", type=int, default=28)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_digits(Path(tmp) / "digits")
        store = LocalStore(Path(tmp) / "store")
        ingest(store, str(Path(tmp) / "digits"), "digits", progress=False)
        cfg = load_config(REPO / "configs" / "digits.yaml").with_overrides(
            store=store.uri,
            **{"data.cache_dir": str(Path(tmp) / "cache"), "data.image_size": args.image_size},
        )
        data = prepare_data(cfg, store)
        # Decode once: both loops then train on identical in-memory tensors.
        tf = eval_transform(data.preprocessing)
        xs = torch.stack([tf(Image.open(data.train.cache.path(k))) for k in data.train.keys])
        ds = TensorDataset(xs, torch.tensor(data.train.targets))

    torch.manual_seed(0)
    base = build_model(cfg.model, len(data.classes), cfg.data.channels, cfg.data.image_size)
    ours_model, plain_model = copy.deepcopy(base), copy.deepcopy(base)
    crit = nn.CrossEntropyLoss()
    ours_opt = build_optimizer(ours_model.parameters(), cfg.train)
    plain_opt = build_optimizer(plain_model.parameters(), cfg.train)

    def loader(epoch: int) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=cfg.train.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(epoch),
        )

    schedule = LRSchedule(
        ours_opt, cfg.train.model_copy(update={"scheduler": "none"}), len(loader(0))
    )
    device = torch.device("cpu")

    ours, plain = [], []
    for epoch in range(args.epochs + 1):  # epoch 0 warms both up and is discarded
        o = train_one_epoch(
            ours_model,
            loader(epoch),
            crit,
            ours_opt,
            schedule,
            device,
            epoch=epoch,
            log_every=cfg.train.log_every,
        )["images_per_s"]
        p = plain_epoch(plain_model, loader(epoch), plain_opt, crit)
        if epoch:
            ours.append(o)
            plain.append(p)
        print(f"epoch {epoch}: visionline {o:.0f} img/s, plain {p:.0f} img/s")
    ratio = statistics.median(ours) / statistics.median(plain)
    write_result(
        "train_overhead",
        {
            "ratio_vs_plain_loop": round(ratio, 3),
            "visionline_images_per_s": round(statistics.median(ours), 1),
            "plain_images_per_s": round(statistics.median(plain), 1),
            "epochs": args.epochs,
            "batch_size": cfg.train.batch_size,
            "model": cfg.model.arch,
            "image_size": args.image_size,
            "train_images": len(ds),
        },
    )


if __name__ == "__main__":
    main()
