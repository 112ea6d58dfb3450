"""Where a run executes: the process group under ``torchrun``, the device, the autocast
dtype, and seeding."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from visionline.config import PipelineConfig, TrainConfig
from visionline.errors import ConfigError, TrainingError

# The oldest Linux NVIDIA driver each CUDA major version of a torch build runs on (CUDA's
# minor-version compatibility): the trainer image's torch is built for CUDA 13.
MIN_DRIVER = {"13": "580.65.06", "12": "525.60.13", "11": "450.80.02"}
_DRIVER_FILE = Path("/proc/driver/nvidia/version")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


# one process, no process group: the default wherever no torchrun set up ranks
SINGLE_PROCESS = Dist()


def init_distributed(device_kind: str, timeout_seconds: float | None = None) -> Dist:
    """The process group torchrun set up ranks for; ``timeout_seconds``
    (``compute.group_timeout_seconds``) bounds every collective: when a peer is lost, the
    survivors' next collective fails after it instead of holding their devices for the
    backend's default (30 min for gloo, 10 min for NCCL)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device_kind == "cuda" else "gloo",
            timeout=timedelta(seconds=timeout_seconds) if timeout_seconds else None,
        )
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(cfg: TrainConfig, local_rank: int = 0) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise TrainingError("train.device is 'cuda' but no GPU is visible")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or cfg.amp == "off":
        return None
    if cfg.amp == "fp16":
        return torch.float16
    if cfg.amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def unwrap(model: nn.Module) -> nn.Module:
    """The model itself, under a ``DistributedDataParallel`` wrapper or not."""
    return model.module if hasattr(model, "module") else model


def needs_cuda(cfg: PipelineConfig) -> bool:
    """Whether the run must train on a GPU: asked for (``train.device: cuda``), or left to
    ``auto`` in a Kubernetes pod that holds GPUs (a CPU fallback would hold them idle)."""
    t, k = cfg.train, cfg.compute.kubernetes
    return t.device == "cuda" or (
        t.device == "auto" and cfg.compute.backend == "kubernetes" and k.gpus > 0
    )


def driver_version(path: Path = _DRIVER_FILE) -> str | None:
    """The loaded NVIDIA kernel driver's version, None when there is none."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for word in text.split():
        if word[:1].isdigit() and word.count(".") >= 1:
            return word
    return None


def check_cuda(cfg: PipelineConfig, driver_file: Path = _DRIVER_FILE) -> None:
    """Fail at once, before any data is read, when the run needs CUDA and this torch
    cannot use it (no driver, a driver older than its CUDA build needs, a CPU build):
    a ConfigError (exit 78) naming both versions, never a silent run on the CPU."""
    if not needs_cuda(cfg) or torch.cuda.is_available():
        return
    build = torch.version.cuda
    driver = driver_version(driver_file)
    need = MIN_DRIVER.get((build or "").split(".")[0])
    raise ConfigError(
        f"train.device {cfg.train.device!r} with compute.kubernetes.gpus "
        f"{cfg.compute.kubernetes.gpus} needs CUDA, which this trainer cannot use: torch "
        f"{torch.__version__} is built for "
        + (f"CUDA {build} (NVIDIA driver >= {need})" if build else "the CPU only")
        + ", and the node's NVIDIA driver is "
        + (driver or f"not loaded ({driver_file} is absent)")
        + ". Schedule the pod on a node with a recent enough driver (docs/kubernetes.md: "
        "GPU nodes), or set train.device: cpu to train on the CPU"
    )
