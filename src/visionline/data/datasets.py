"""Datasets over a manifest, reading images one at a time from local disk.

Nothing here holds a split in memory: a dataset is a list of keys, and each item is
read from disk when it is asked for. An S3 store is mirrored to a local disk cache (a
bounded parallel warm-up fills it); a local store is read in place.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.utils.data import Dataset

from visionline.data.images import decode_image
from visionline.data.stream import bounded_map
from visionline.errors import KeyNotFoundError
from visionline.storage import ArtifactStore, LocalStore


class LocalCache:
    """Store objects as local files. Keys are immutable, so a cached file never goes
    stale; downloads verify the recorded sha256. A local store is already on disk, so
    its files are used where they are instead of being copied."""

    def __init__(self, store: ArtifactStore, cache_dir: str | Path) -> None:
        self.store = store
        self.in_place = isinstance(store, LocalStore)
        tag = hashlib.sha256(store.uri.encode()).hexdigest()[:12]
        if isinstance(store, LocalStore):
            self.root = store.root
        else:
            self.root = Path(cache_dir).expanduser().resolve() / tag
        self._found: set[str] = set()  # in place: keys already checked (objects are immutable)

    def path(self, key: str) -> Path:
        if self.in_place:
            # exists() also refuses keys that would leave the store ('..', absolute); an
            # epoch asks for every key again, so each is checked once
            if key not in self._found:
                if not self.store.exists(key):
                    raise KeyNotFoundError(f"no object {key!r} in store {self.store.uri}")
                self._found.add(key)
            return self.root / key
        p = self.root / key
        if not p.is_file():
            self.store.get_file(key, p, verify=True)
        return p

    def prefetch(self, keys: Sequence[str], workers: int = 16) -> None:
        """Download what is not cached yet, ``workers`` at a time (nothing kept in memory)."""
        if self.in_place:
            return
        missing = (k for k in dict.fromkeys(keys) if not (self.root / k).is_file())
        for _ in bounded_map(self.path, missing, workers):
            pass


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
