"""The run's data: the dataset's train and val splits with their preprocessing, and the
loaders that feed them to the loop."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from visionline.config import PipelineConfig, TrainConfig
from visionline.data.datasets import LocalCache, ManifestDataset
from visionline.data.images import image_limits
from visionline.data.manifest import DatasetRef, read_manifest
from visionline.data.transforms import (
    Preprocessing,
    eval_transform,
    stats_transform,
    train_transform,
)
from visionline.errors import TrainingError
from visionline.storage import ArtifactStore
from visionline.training.devices import Dist
from visionline.training.resume import EpochOrder, SeededSamples


@dataclass
class DataBundle:
    ref: DatasetRef
    classes: list[str]
    preprocessing: Preprocessing
    train: ManifestDataset
    val: ManifestDataset


def compute_mean_std(
    ds: ManifestDataset, channels: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    pixels = 0
    for x, _ in ds:
        flat = x.reshape(channels, -1).double()
        total += flat.sum(1)
        total_sq += (flat**2).sum(1)
        pixels += flat.shape[1]
    if pixels == 0:
        raise TrainingError("the train split is empty: nothing to compute statistics from")
    mean = total / pixels
    std = (total_sq / pixels - mean**2).clamp_min(1e-12).sqrt()
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)


def prepare_data(cfg: PipelineConfig, store: ArtifactStore, ref: DatasetRef) -> DataBundle:
    """Dataset ``ref`` (the run plan's, already resolved) read for ``cfg``: its classes,
    normalisation statistics (computed from the train split unless ``cfg`` gives them)
    and the two splits."""
    manifest = read_manifest(store, ref)
    info = store.get_json(ref.info_key) if store.exists(ref.info_key) else {}
    classes = list(cfg.data.classes or info.get("classes") or sorted(manifest["label"].unique()))
    cache = LocalCache(store, cfg.data.cache_dir)
    geometry = Preprocessing(
        cfg.data.image_size, cfg.data.channels, (0.0,), (1.0,), cfg.data.crop_ratio
    )
    if cfg.data.mean and cfg.data.std:
        mean, std = tuple(cfg.data.mean), tuple(cfg.data.std)
    else:
        stats_ds = ManifestDataset(manifest, "train", classes, cache, stats_transform(geometry))
        mean, std = compute_mean_std(stats_ds, cfg.data.channels)
    pre = Preprocessing(cfg.data.image_size, cfg.data.channels, mean, std, cfg.data.crop_ratio)
    limits = image_limits(cfg.data, pre.resize_to)
    train = ManifestDataset(
        manifest, "train", classes, cache, train_transform(pre, cfg.augment), image_limits=limits
    )
    val = ManifestDataset(manifest, "val", classes, cache, eval_transform(pre), image_limits=limits)
    if len(train) == 0 or len(val) == 0:
        raise TrainingError(
            f"dataset {ref}: train ({len(train)}) and val ({len(val)}) must be non-empty"
        )
    return DataBundle(ref, classes, pre, train, val)


def make_loader(
    ds: ManifestDataset,
    cfg: TrainConfig,
    *,
    shuffle: bool,
    epoch: int,
    ddp: Dist,
    device: torch.device,
    start: int = 0,
) -> DataLoader:
    """Training data (``shuffle``) comes in the epoch's order from sample ``start`` on, each
    sample under its own seed (``visionline.training.resume``): a run stopped at any batch resumes
    with exactly the batches it would have seen."""
    sampler = None
    generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    if shuffle:
        sampler = EpochOrder(
            len(ds), cfg.seed, epoch, rank=ddp.rank, world_size=ddp.world_size, start=start
        )
        ds = SeededSamples(ds)
    return DataLoader(
        ds,
        batch_size=cfg.batch_size,
        shuffle=False,
        sampler=sampler,
        generator=generator,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        drop_last=False,
    )
