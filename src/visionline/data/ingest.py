"""Ingestion: an ImageFolder (local or s3://) or a CSV of path,label -> store + manifest.

The dataset version is a hash of the content (labels, relative paths, image hashes and
split ratios), so the same data always lands under the same version and a second
ingest writes nothing.

An ingest runs in three phases, and only the last two write:

1. **scan** (``visionline.data.sources``): list the source and check every name before
   any byte is read: labels and the dataset name must be safe store-key components,
   and every file a CSV (or a symlink in a folder) names must lie inside the source's
   own folder, or inside a place the caller allowed explicitly (``allow_outside``).
2. **inspect**: read, hash and inspect every file, streamed through a bounded window
   of threads so at most a few images' bytes are in memory at once. Only the small
   manifest rows are kept. This yields the content version, which is part of every
   key, so nothing can be uploaded before it ends.
3. **upload**: read each decodable image again (verifying it still has the hash
   recorded in phase 2), upload it, then write ``dataset.json``, the manifest (the
   commit marker) and ``LATEST``. If anything fails, every object this ingest created
   is deleted again (objects that were already there are left alone).

A file that is not a usable image is recorded in the manifest as refused
(``decodable=false``, ``key`` empty, the reason in ``error``) and is never copied.

A source that names ``train`` and ``test`` but no ``val`` (Fashion-MNIST's official
partition) gets its val split carved out of train by content hash, the share being
``val / (train + val)`` of the configured ratios, so training has a val split and the
official test split stays untouched.

Two opt-in clean-ups make a source the gate refuses trainable, and ``dataset.json``
records everything they left out (``dropped``): ``drop_duplicates`` keeps one copy of
each exact duplicate (the one in the earliest split, train before val before test, so
leakage is removed from the evaluation side), ``drop_undecodable`` leaves refused files
out of the manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from visionline.config import SplitConfig
from visionline.data.images import inspect_image
from visionline.data.manifest import (
    MANIFEST_COLUMNS,
    SPLITS,
    DatasetRef,
    latest_key,
    manifest_to_bytes,
)
from visionline.data.sources import SourceFile, check_dataset_name, scan_source
from visionline.data.split import assign_split
from visionline.data.stream import bounded_map
from visionline.errors import IngestError, KeyNotFoundError
from visionline.storage import ArtifactStore, sha256_bytes
from visionline.version import code_version

log = logging.getLogger(__name__)


_FORMAT_EXT = {
    "JPEG": ".jpg",
    "MPO": ".jpg",
    "PNG": ".png",
    "WEBP": ".webp",
    "BMP": ".bmp",
    "GIF": ".gif",
    "TIFF": ".tif",
}


@dataclass(frozen=True)
class IngestResult:
    ref: DatasetRef
    images: int
    undecodable: int  # refused files: recorded in the manifest, not copied
    created: bool  # False when this exact version already existed
    dropped: int = 0  # rows left out by drop_duplicates / drop_undecodable


_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}


def carve_val(df: pd.DataFrame, ratios: SplitConfig) -> bool:
    """Move a ``val / (train + val)`` share of train to val by content hash, when the
    source named train and test and no val; True when it did. Identical bytes move
    together, so the carve adds no leakage."""
    if ratios.val <= 0 or not len(df) or "val" in set(df["split"]):
        return False
    if not {"train", "test"} <= set(df["split"]):
        return False
    share = ratios.val / (ratios.train + ratios.val)
    u = df["sha256"].str[:15].map(lambda h: int(h, 16) / float(16**15))
    df.loc[(df["split"] == "train") & (u < share), "split"] = "val"
    return True


def drop_rows(df: pd.DataFrame, duplicates: bool, undecodable: bool) -> tuple[pd.DataFrame, dict]:
    """``df`` without the rows the clean-ups leave out, and the record of them."""
    record: dict = {}
    if undecodable:
        bad = df[~df["decodable"]]
        record["undecodable"] = [
            {"source": r.source, "label": r.label, "split": r.split, "error": r.error}
            for r in bad.itertuples(index=False)
        ]
        df = df[df["decodable"]]
    if duplicates:
        order = df.assign(_rank=df["split"].map(_SPLIT_ORDER)).sort_values(
            ["sha256", "_rank", "label", "source"]
        )
        first = order.drop_duplicates("sha256")
        kept_by_sha = dict(zip(first["sha256"], first["source"], strict=True))
        extra = order[order.duplicated("sha256")]
        record["duplicates"] = [
            {
                "source": r.source,
                "label": r.label,
                "split": r.split,
                "sha256": r.sha256,
                "kept": kept_by_sha[r.sha256],
            }
            for r in extra.itertuples(index=False)
        ]
        df = df.drop(index=extra.index)
    return df.sort_values(["label", "source"]).reset_index(drop=True), record


# --------------------------------------------------------------------------- streaming
def inspect_file(f: SourceFile, ratios: SplitConfig, max_pixels: int) -> tuple:
    """One manifest row (MANIFEST_COLUMNS order); a tuple, as ingest keeps one per file."""
    try:
        data = f.read()
    except Exception as e:
        raise IngestError(f"cannot read {f.rel}: {e}") from e
    digest = sha256_bytes(data)
    info = inspect_image(data, max_pixels)
    key = None
    if info.decodable:
        fmt = info.format or ""
        ext = _FORMAT_EXT.get(fmt) or (f".{fmt.lower()}" if fmt.isalnum() else ".img")
        # Content-addressed inside the label folder: identical bytes share one object.
        key = f"images/{f.label}/{digest[:20]}{ext}"
    return (
        key,
        f.rel,
        f.label,
        digest,
        len(data),
        info.width,
        info.height,
        info.mode,
        info.format,
        info.decodable,
        info.error,
        f.split or assign_split(digest, ratios),
    )


def dataset_version(df: pd.DataFrame, ratios: SplitConfig, classes: list[str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(ratios.model_dump(), sort_keys=True).encode())
    h.update(json.dumps(classes).encode())
    for rec in df.sort_values(["source", "sha256"])[
        ["source", "label", "split", "sha256"]
    ].itertuples(index=False):
        h.update("\t".join(rec).encode() + b"\n")
    return h.hexdigest()[:12]


# --------------------------------------------------------------------------- upload
@dataclass(frozen=True, slots=True)
class _Upload:
    key: str  # full store key
    sha256: str
    source: SourceFile


class _Writes:
    """What one ingest has (maybe) written: the keys to delete if it fails.

    A key is recorded before its write starts, because a write whose answer was lost
    may still have landed. Keys that existed before the ingest are never recorded.
    """

    def __init__(self, store: ArtifactStore, existing: set[str]) -> None:
        self.store = store
        self.existing = existing
        self.keys: list[str] = []
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes) -> None:
        if key not in self.existing:
            with self._lock:
                self.keys.append(key)
        self.store.put_bytes(key, data)

    def undo(self, workers: int, latest: tuple[str, bytes | None] | None) -> list[str]:
        """Delete what was written, commit marker first; return keys left behind."""
        marker = [k for k in self.keys if k.endswith("/manifest.parquet")]
        rest = [k for k in self.keys if k not in marker]
        failed: list[str] = []

        def delete(key: str) -> str | None:
            try:
                self.store.delete(key)
            except Exception as e:  # keep going: remove as much as possible
                log.error("could not remove %s after a failed ingest: %s", key, e)
                return key
            return None

        failed += [k for k in map(delete, marker) if k]
        if latest is not None:
            key, previous = latest
            try:
                if previous is None:
                    self.store.delete(key)
                else:
                    self.store.put_bytes(key, previous)
            except Exception as e:
                log.error("could not restore %s after a failed ingest: %s", key, e)
                failed.append(key)
        failed += [k for k in bounded_map(delete, rest, workers) if k]
        return failed


def _upload_one(u: _Upload, writes: _Writes) -> None:
    try:
        data = u.source.read()
    except Exception as e:
        raise IngestError(f"cannot read {u.source.rel} again: {e}") from e
    if sha256_bytes(data) != u.sha256:
        raise IngestError(f"{u.source.rel} changed while it was being ingested: ingest again")
    writes.put(u.key, data)


def ingest(
    store: ArtifactStore,
    src: str,
    name: str,
    ratios: SplitConfig | None = None,
    max_pixels: int = 64_000_000,
    workers: int = 16,
    s3_client: object | None = None,
    progress: bool = True,
    allow_outside: Sequence[str | Path] = (),
    drop_duplicates: bool = False,
    drop_undecodable: bool = False,
) -> IngestResult:
    """Ingest ``src`` as dataset ``name``; idempotent for identical content.

    ``allow_outside``: local folders or ``s3://bucket/prefix`` places that files listed
    in a CSV (or symlinks in a folder) may come from besides the source's own folder.
    ``drop_duplicates`` / ``drop_undecodable``: the clean-ups in the module docstring.
    Either everything is written, or nothing this call created is left in the store.
    """
    ratios = ratios or SplitConfig()
    check_dataset_name(name)
    files, classes = scan_source(src, s3_client, allow_outside)
    if not files:
        raise IngestError(f"no images found in {src}")

    df = _inspect_all(files, ratios, max_pixels, workers, progress, name)
    carved = carve_val(df, ratios)
    df, dropped = drop_rows(df, drop_duplicates, drop_undecodable)
    n_dropped = sum(len(v) for v in dropped.values())
    if n_dropped:
        log.warning("left out %s (recorded in dataset.json)", _dropped_summary(dropped))
    ref = DatasetRef(name, dataset_version(df, ratios, classes))
    undecodable = int((~df["decodable"]).sum())
    if undecodable:
        log.warning(
            "%d of %d files are not usable images: recorded as refused, not copied",
            undecodable,
            len(df),
        )
    if store.exists(ref.manifest_key):
        log.info("dataset %s already in %s: nothing to write", ref, store.uri)
        return IngestResult(ref, len(df), undecodable, created=False, dropped=n_dropped)

    kept = df[df["decodable"]].drop_duplicates("key")[["key", "sha256", "_file"]]
    df["key"] = [f"{ref.prefix}/{k}" if isinstance(k, str) else None for k in df["key"]]
    info = {
        "name": name,
        "version": ref.version,
        "source": src,
        "allow_outside": [str(a) for a in allow_outside],
        "classes": classes,
        "split_ratios": ratios.model_dump(),
        "counts": {
            s: df[df["split"] == s]["label"].value_counts().sort_index().to_dict() for s in SPLITS
        },
        "images": len(df),
        "undecodable": undecodable,
        "val_carved_from_train": carved,
        "dropped": dropped,
        "created": datetime.now(UTC).isoformat(),
        "code_version": code_version(),
        "python": platform.python_version(),
    }
    uploads = (
        _Upload(f"{ref.prefix}/{k}", sha, files[i]) for k, sha, i in kept.itertuples(index=False)
    )
    _write_version(store, ref, df, info, uploads, len(kept), workers, progress)
    return IngestResult(ref, len(df), undecodable, created=True, dropped=n_dropped)


def _dropped_summary(dropped: dict) -> str:
    return ", ".join(f"{len(v)} {kind}" for kind, v in dropped.items() if v) or "nothing"


def _inspect_all(
    files: list[SourceFile],
    ratios: SplitConfig,
    max_pixels: int,
    workers: int,
    progress: bool,
    name: str,
) -> pd.DataFrame:
    """Phase 2: every file's manifest row, sorted by label and source; ``_file`` indexes
    ``files`` (not written: not a manifest column)."""
    rows: list[tuple] = []
    with tqdm(total=len(files), desc=f"inspect {name}", unit="img", disable=not progress) as bar:
        for row in bounded_map(lambda f: inspect_file(f, ratios, max_pixels), files, workers):
            rows.append(row)
            bar.update(1)
    df = pd.DataFrame.from_records(rows, columns=MANIFEST_COLUMNS)
    df["_file"] = range(len(df))
    return df.sort_values(["label", "source"]).reset_index(drop=True)


def _write_version(
    store: ArtifactStore,
    ref: DatasetRef,
    df: pd.DataFrame,
    info: dict,
    uploads: Iterator[_Upload],
    total: int,
    workers: int,
    progress: bool,
) -> None:
    """Phase 3: the images, then ``dataset.json``, the manifest (the commit marker) and
    ``LATEST``; on any failure, what this call created is deleted and LATEST restored."""
    # Objects already under this version's prefix (a concurrent or interrupted ingest of
    # the same content) are content-addressed, so they are reused and never deleted.
    existing = set(store.list(ref.prefix + "/"))
    writes = _Writes(store, existing)
    lkey = latest_key(ref.name)
    latest: tuple[str, bytes | None] | None = None
    try:
        todo = (u for u in uploads if u.key not in existing or not _same(store, u))
        with tqdm(total=total, desc=f"upload {ref}", unit="obj", disable=not progress) as bar:
            for _ in bounded_map(lambda u: _upload_one(u, writes), todo, workers):
                bar.update(1)
        writes.put(ref.info_key, json.dumps(info, indent=2, sort_keys=True).encode())
        writes.put(ref.manifest_key, manifest_to_bytes(df))  # the commit marker
        previous = store.get_bytes(lkey) if store.exists(lkey) else None
        latest = (lkey, previous)
        store.put_bytes(lkey, ref.version.encode())
    except BaseException as e:
        left = writes.undo(workers, latest)
        if not isinstance(e, Exception):
            raise  # Ctrl-C and friends: cleaned up, now let them through
        removed = len(set(writes.keys) - set(left))
        msg = (
            f"ingest of {ref} into {store.uri} failed: {e}. Removed the {removed} objects "
            "it had started to write"
        )
        if left:
            msg += f"; could not remove {len(left)} (e.g. {left[0]}): delete them by hand"
        raise IngestError(msg) from e


def _same(store: ArtifactStore, u: _Upload) -> bool:
    try:
        return store.sha256(u.key) == u.sha256
    except KeyNotFoundError:
        return False
