"""resnet18 training throughput on a GPU: bf16 autocast + channels_last, 32x32 generated data.

Uses visionline's own train_one_epoch (the code path `fit()` runs), on tensors already on
the device, so the figure is the training step, not the data loader. Run it on a machine
with a GPU (the lent device machine); on a CPU it refuses unless --allow-cpu (a smoke run).

    python benchmarks/train_gpu.py [--steps 300] [--batch-size 512]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import write_result
from visionline.config import ModelConfig, TrainConfig
from visionline.models import build_model
from visionline.training import LRSchedule, build_optimizer, train_one_epoch


class OnDevice:
    """Batches of random 32x32 images and labels, already on the device."""

    def __init__(self, steps: int, batch: int, device: torch.device) -> None:
        g = torch.Generator(device="cpu").manual_seed(0)
        self.x = torch.randn(batch, 3, 32, 32, generator=g).to(device)
        self.y = torch.randint(0, 10, (batch,), generator=g).to(device)
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            yield self.x, self.y


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--allow-cpu", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available() and not args.allow_cpu:
        raise SystemExit(
            "no GPU visible: run this on the device machine (or --allow-cpu for a smoke run)"
        )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = TrainConfig(optimizer="sgd", lr=0.1, scheduler="none", amp="bf16", channels_last=True)
    model = build_model(ModelConfig(arch="resnet18"), 10, 3, 32).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.cuda.reset_peak_memory_stats()
    opt = build_optimizer(model.parameters(), cfg)
    sched = LRSchedule(opt, cfg, args.steps)
    amp = torch.bfloat16 if device.type == "cuda" else None
    crit = nn.CrossEntropyLoss()
    warm = OnDevice(20, args.batch_size, device)
    train_one_epoch(
        model,
        warm,
        crit,
        opt,
        sched,
        device,
        epoch=0,
        amp_dtype=amp,
        channels_last=device.type == "cuda",
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = train_one_epoch(
        model,
        OnDevice(args.steps, args.batch_size, device),
        crit,
        opt,
        sched,
        device,
        epoch=1,
        amp_dtype=amp,
        channels_last=device.type == "cuda",
        log_every=100,
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    write_result(
        "train_gpu",
        {
            "images_per_s": round(out["images"] / seconds, 1),
            "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)
            if device.type == "cuda"
            else None,
            "gpu": torch.cuda.get_device_name(0)
            if device.type == "cuda"
            else "none (cpu smoke run)",
            "batch_size": args.batch_size,
            "steps": args.steps,
            "amp": "bf16" if amp else "off",
            "channels_last": True,
        },
    )


if __name__ == "__main__":
    main()
