"""Datasets over a manifest, reading images through a local cache of the store."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.utils.data import Dataset

from visionline.data.images import decode_image
from visionline.storage import ArtifactStore


class LocalCache:
    """Store objects mirrored on local disk. Keys are immutable, so a cached file never
    goes stale; downloads verify the recorded sha256."""

    def __init__(self, store: ArtifactStore, cache_dir: str | Path) -> None:
        self.store = store
        tag = hashlib.sha256(store.uri.encode()).hexdigest()[:12]
        self.root = Path(cache_dir).expanduser().resolve() / tag

    def path(self, key: str) -> Path:
        p = self.root / key
        if not p.is_file():
            self.store.get_file(key, p, verify=True)
        return p

    def prefetch(self, keys: Sequence[str], workers: int = 16) -> None:
        missing = [k for k in dict.fromkeys(keys) if not (self.root / k).is_file()]
        if missing:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(self.path, missing))


class ManifestDataset(Dataset):
    """(image tensor, class index) for the decodable rows of one split."""

    def __init__(
        self,
        manifest: pd.DataFrame,
        split: str,
        classes: Sequence[str],
        cache: LocalCache,
        transform: Callable,
        max_pixels: int = 64_000_000,
        image_limits: Mapping[str, Any] | None = None,
    ) -> None:
        """``image_limits``: every keyword limit of ``decode_image`` (see
        ``images.image_limits``); without it, only ``max_pixels`` and the defaults."""
        rows = manifest[(manifest["split"] == split) & manifest["decodable"]]
        rows = rows[rows["label"].isin(classes)].sort_values(["label", "source"])
        index = {c: i for i, c in enumerate(classes)}
        self.keys = rows["key"].tolist()
        self.sources = rows["source"].tolist()
        self.targets = [index[c] for c in rows["label"]]
        self.cache = cache
        self.transform = transform
        self.limits = dict(image_limits or {"max_pixels": max_pixels})
        cache.prefetch(self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        data = self.cache.path(self.keys[i]).read_bytes()
        return self.transform(decode_image(data, **self.limits)), self.targets[i]
