"""GPU training throughput: visionline's train_one_epoch vs a plain PyTorch loop, same run.

ResNet-18 with the CIFAR stem (``model.stem: cifar``: 3x3 stride-1 first conv, no
max-pool) on 32x32 images, bf16 autocast, channels_last, cuDNN autotuning on, the
batches already on the GPU: the figure is the training step, not the data loader. The
baseline is the loop a PyTorch user writes (autocast, zero_grad, backward, step), on a
copy of the same model with the same optimizer settings, the same batches and the same
per-step cosine schedule. The two alternate in random order within each round; each
round's ratio is paired. Achieved TFLOP/s counts the forward pass with
``torch.utils.flop_counter.FlopCounterMode`` and takes training as 3x the forward
(forward + backward for activations and weights).

Target on an H200: at least 100k images/s and at least 0.95 of the plain loop. The
default run (5 rounds x 200 steps x 1024 images per arm) takes under a minute there.

    python benchmarks/train_gpu.py [--rounds 5] [--steps 200] [--batch-size 1024]
                                   [--arch resnet18] [--stem cifar] [--image-size 32]

It needs a GPU; ``--allow-cpu`` runs it on the CPU anyway and ``--smoke`` runs it on
whatever is there with tiny sizes (the tests do), both marked as not a GPU figure.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import add_common_args, arm_order, paired, spread, write_result
from visionline.config import ModelConfig, TrainConfig
from visionline.model.architectures import build_model
from visionline.training.loop import train_one_epoch
from visionline.training.optim import LRSchedule, build_optimizer

ARMS = ("visionline", "plain")


class OnDevice:
    """``steps`` batches cycled from a small pool of random images already on the device
    (in the memory format the model runs in, so neither loop pays a conversion)."""

    def __init__(
        self,
        steps: int,
        batch: int,
        size: int,
        device: torch.device,
        channels_last: bool,
        pool: int = 4,
    ) -> None:
        g = torch.Generator(device="cpu").manual_seed(0)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.batches = [
            (
                torch.randn(batch, 3, size, size, generator=g)
                .to(device)
                .contiguous(memory_format=fmt),
                torch.randint(0, 10, (batch,), generator=g).to(device),
            )
            for _ in range(pool)
        ]
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(self.steps):
            yield self.batches[i % len(self.batches)]


def plain_loop(
    model: nn.Module,
    data: OnDevice,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    crit: nn.Module,
    amp: torch.dtype | None,
    device: torch.device,
) -> None:
    """What a PyTorch user writes: no metrics, no logging."""
    model.train()
    for x, y in data:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = crit(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()


def forward_flops_per_image(model: nn.Module, x: torch.Tensor) -> float:
    probe = copy.deepcopy(model)  # the probe's forward updates batch-norm statistics
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        probe(x)
    return counter.get_total_flops() / x.shape[0]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=200, help="training steps per arm per round")
    ap.add_argument("--warmup-steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--arch", default="resnet18", choices=["resnet18", "resnet50"])
    ap.add_argument("--stem", default="cifar", choices=["cifar", "imagenet"])
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--amp", default="bf16", choices=["bf16", "off"])
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--allow-cpu", action="store_true", help="run on the CPU if no GPU is seen")
    add_common_args(ap)
    args = ap.parse_args()
    if args.smoke:
        args.rounds, args.steps, args.warmup_steps, args.batch_size = 2, 2, 1, 4
    return args


@dataclass
class Arms:
    """Both arms' copies of one model, each with its own optimizer and schedule."""

    args: argparse.Namespace
    device: torch.device
    amp: torch.dtype | None
    channels_last: bool
    models: dict[str, nn.Module]
    crit: nn.Module
    ours_opt: torch.optim.Optimizer
    ours_sched: LRSchedule
    plain_opt: torch.optim.Optimizer
    plain_sched: torch.optim.lr_scheduler.LRScheduler

    def run(self, arm: str, steps: int, epoch: int) -> float:
        """Images per second of ``steps`` training steps of one arm."""
        args, device = self.args, self.device
        data = OnDevice(steps, args.batch_size, args.image_size, device, self.channels_last)
        sync(device)
        t = time.perf_counter()
        if arm == "visionline":
            train_one_epoch(
                self.models[arm],
                data,
                self.crit,
                self.ours_opt,
                self.ours_sched,
                device,
                epoch=epoch,
                amp_dtype=self.amp,
                channels_last=self.channels_last,
                log_every=max(steps, 1),
            )
        else:
            plain_loop(
                self.models[arm],
                data,
                self.plain_opt,
                self.plain_sched,
                self.crit,
                self.amp,
                device,
            )
        sync(device)
        return steps * args.batch_size / (time.perf_counter() - t)


def build_arms(args: argparse.Namespace, device: torch.device) -> Arms:
    cuda = device.type == "cuda"
    channels_last = not args.no_channels_last
    amp = torch.bfloat16 if (args.amp == "bf16" and cuda) else None
    total_steps = args.rounds * args.steps + args.warmup_steps
    cfg = TrainConfig(
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        scheduler="cosine",
        epochs=1,
        amp=args.amp,
        channels_last=channels_last,
    )
    torch.manual_seed(args.seed)
    base = build_model(ModelConfig(arch=args.arch, stem=args.stem), 10, 3, args.image_size)
    base = base.to(device)
    if channels_last:
        base = base.to(memory_format=torch.channels_last)
    models = {arm: copy.deepcopy(base) for arm in ARMS}
    crit = nn.CrossEntropyLoss()
    ours_opt = build_optimizer(models["visionline"].parameters(), cfg)
    ours_sched = LRSchedule(ours_opt, cfg, total_steps)
    plain_opt = torch.optim.SGD(
        models["plain"].parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    plain_sched = torch.optim.lr_scheduler.CosineAnnealingLR(plain_opt, T_max=total_steps)
    return Arms(
        args, device, amp, channels_last, models, crit, ours_opt, ours_sched, plain_opt, plain_sched
    )


def measure(arms: Arms) -> dict[str, list[float]]:
    """Warm-up, then every round both arms in random order: arm -> images/s per round."""
    args = arms.args
    for arm in ARMS:  # warm-up: cuDNN autotuning, allocator, optimizer state
        arms.run(arm, args.warmup_steps, 0)
    rng = random.Random(args.seed)
    rates: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for r in range(1, args.rounds + 1):
        for arm in arm_order(ARMS, rng):
            rates[arm].append(arms.run(arm, args.steps, r))
        print(
            f"round {r}/{args.rounds}: "
            + ", ".join(f"{a} {rates[a][-1]:,.0f} img/s" for a in ARMS),
            flush=True,
        )
    return rates


def figures(arms: Arms, rates: dict[str, list[float]], train_flops: float) -> dict:
    """What train_gpu.json holds."""
    args, cuda = arms.args, arms.device.type == "cuda"
    ours = statistics.median(rates["visionline"])
    plain = statistics.median(rates["plain"])
    ratio = paired(rates["visionline"], rates["plain"])
    return {
        "images_per_s": round(ours, 1),
        "plain_images_per_s": round(plain, 1),
        "ratio_vs_plain": ratio["median"],
        "ratio_vs_plain_paired": ratio,
        "tflops": round(ours * train_flops / 1e12, 2),
        "plain_tflops": round(plain * train_flops / 1e12, 2),
        "gflops_per_image_train": round(train_flops / 1e9, 4),
        "gpu": torch.cuda.get_device_name(0) if cuda else "none (CPU run, not a GPU figure)",
        "stem": args.stem,
        "arch": args.arch,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "images_per_s_rounds": {a: spread(v, 1) for a, v in rates.items()},
        "amp": "bf16" if arms.amp else "off",
        "channels_last": arms.channels_last,
        "cudnn_benchmark": True,
        "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None,
        "target": "H200: images_per_s >= 100000 and ratio_vs_plain >= 0.95",
    }


def main() -> None:
    args = parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not (args.allow_cpu or args.smoke):
        raise SystemExit(
            "no GPU visible: run this on a machine with one (or --smoke / --allow-cpu for a "
            "CPU run that checks the script, not a figure)"
        )
    device = torch.device("cuda" if cuda else "cpu")
    # cuDNN picks the fastest convolution algorithms for these fixed shapes once, up front.
    torch.backends.cudnn.benchmark = True
    arms = build_arms(args, device)
    fwd_flops = forward_flops_per_image(
        arms.models["plain"],
        OnDevice(1, min(args.batch_size, 16), args.image_size, device, arms.channels_last).batches[
            0
        ][0],
    )
    train_flops = 3 * fwd_flops
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rates = measure(arms)
    write_result(
        "train_gpu",
        figures(arms, rates, train_flops),
        args.results_dir,
        smoke=args.smoke or not cuda,
    )


if __name__ == "__main__":
    main()
