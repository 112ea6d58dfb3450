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
   of threads so at most a few images' bytes are in memory at once. The manifest rows
   are spilled to disk as they come (``visionline.data.spill``: a temporary SQLite
   file), as are the scanned files once the scan ends, so memory does not grow with
   the number of images. This yields the content version, which is part of every
   key, so nothing can be uploaded before it ends.
3. **upload**: read each decodable image again (verifying it still has the hash
   recorded in phase 2), upload it, then write ``dataset.json``, the manifest (the
   commit marker, written from the spill in Parquet row groups) and ``LATEST``. If anything fails, every object this ingest created
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
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from visionline.config import SplitConfig
from visionline.data.images import inspect_image
from visionline.data.manifest import SPLITS, DatasetRef, latest_key
from visionline.data.sources import SourceFile, check_dataset_name, iter_source
from visionline.data.spill import Spill
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
    rows = df.sort_values(["source", "sha256"])[["source", "label", "split", "sha256"]]
    return _version_of(rows.itertuples(index=False), ratios, classes)


def _version_of(rows: Iterable[Sequence[str]], ratios: SplitConfig, classes: list[str]) -> str:
    """The content version from (source, label, split, sha256) rows sorted by source and
    sha256: the same for the in-memory manifests of labelling and the spilled ingest."""
    h = hashlib.sha256()
    h.update(json.dumps(ratios.model_dump(), sort_keys=True).encode())
    h.update(json.dumps(classes).encode())
    for rec in rows:
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
    may still have landed. Keys that existed before the ingest are never recorded. The
    record is a file (one key a line), not a list: an ingest writes one key per image.
    """

    def __init__(self, store: ArtifactStore, existing: set[str], log_path: Path) -> None:
        self.store = store
        self.existing = existing
        self.count = 0
        self._path = log_path
        self._log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 (closed in keys)
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes) -> None:
        if key not in self.existing:
            with self._lock:
                self._log.write(key + "\n")
                self.count += 1
        self.store.put_bytes(key, data)

    def keys(self) -> Iterator[str]:
        with self._lock:
            self._log.flush()
        with open(self._path, encoding="utf-8") as f:
            for line in f:
                yield line.rstrip("\n")

    def close(self) -> None:
        self._log.close()

    def undo(self, workers: int, latest: tuple[str, bytes | None] | None) -> list[str]:
        """Delete what was written, commit marker first; return keys left behind."""
        marker = [k for k in self.keys() if k.endswith("/manifest.parquet")]
        rest = (k for k in self.keys() if k not in marker)
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
    with tempfile.TemporaryDirectory(prefix="visionline-ingest-") as work:
        spill = Spill(Path(work))
        try:
            # Phase 1 ends before any byte is read: every file is listed and checked,
            # straight into the spill (nothing per file stays in memory).
            scan = iter_source(src, s3_client, allow_outside)
            spill.add_files(scan)
            if not spill.files:
                raise IngestError(f"no images found in {src}")
            classes = scan.classes or []
            return _ingest_spilled(
                store,
                spill,
                src,
                name,
                ratios,
                classes,
                max_pixels,
                workers,
                progress,
                allow_outside,
                (drop_duplicates, drop_undecodable),
            )
        finally:
            spill.close()


def _ingest_spilled(
    store: ArtifactStore,
    spill: Spill,
    src: str,
    name: str,
    ratios: SplitConfig,
    classes: list[str],
    max_pixels: int,
    workers: int,
    progress: bool,
    allow_outside: Sequence[str | Path],
    drops: tuple[bool, bool],
) -> IngestResult:
    _inspect_all(spill, ratios, max_pixels, workers, progress, name)
    carved = spill.carve_val(ratios)
    dropped = spill.drop(*drops)
    n_dropped = sum(len(v) for v in dropped.values())
    if n_dropped:
        log.warning("left out %s (recorded in dataset.json)", _dropped_summary(dropped))
    ref = DatasetRef(name, _version_of(spill.version_lines(), ratios, classes))
    images, undecodable = spill.count(), spill.count("NOT decodable")
    if undecodable:
        log.warning(
            "%d of %d files are not usable images: recorded as refused, not copied",
            undecodable,
            images,
        )
    if store.exists(ref.manifest_key):
        log.info("dataset %s already in %s: nothing to write", ref, store.uri)
        return IngestResult(ref, images, undecodable, created=False, dropped=n_dropped)

    info = {
        "name": name,
        "version": ref.version,
        "source": src,
        "allow_outside": [str(a) for a in allow_outside],
        "classes": classes,
        "split_ratios": ratios.model_dump(),
        "counts": spill.counts(),
        "images": images,
        "undecodable": undecodable,
        "val_carved_from_train": carved,
        "dropped": dropped,
        "created": datetime.now(UTC).isoformat(),
        "code_version": code_version(),
        "python": platform.python_version(),
    }
    total = spill.upload_count()
    _write_version(store, ref, spill, info, total, workers, progress)
    per_split = ", ".join(f"{s} {sum(info['counts'][s].values())}" for s in SPLITS)
    log.info("dataset %s written to %s: %d images (%s)", ref, store.uri, total, per_split)
    return IngestResult(ref, images, undecodable, created=True, dropped=n_dropped)


def _dropped_summary(dropped: dict) -> str:
    return ", ".join(f"{len(v)} {kind}" for kind, v in dropped.items() if v) or "nothing"


def _inspect_all(
    spill: Spill,
    ratios: SplitConfig,
    max_pixels: int,
    workers: int,
    progress: bool,
    name: str,
) -> None:
    """Phase 2: every file's manifest row, into the spill as it comes (scan order)."""
    with tqdm(total=spill.files, desc=f"inspect {name}", unit="img", disable=not progress) as bar:

        def rows() -> Iterator[tuple]:
            for row in bounded_map(
                lambda f: inspect_file(f, ratios, max_pixels), spill.iter_files(), workers
            ):
                bar.update(1)
                yield row

        spill.add_rows(rows())
    spill.finish_rows()


def _write_version(
    store: ArtifactStore,
    ref: DatasetRef,
    spill: Spill,
    info: dict,
    total: int,
    workers: int,
    progress: bool,
) -> None:
    """Phase 3: the images, then ``dataset.json``, the manifest (the commit marker) and
    ``LATEST``; on any failure, what this call created is deleted and LATEST restored."""
    # Objects already under this version's prefix (a concurrent or interrupted ingest of
    # the same content) are content-addressed, so they are reused and never deleted.
    existing = set(store.list(ref.prefix + "/"))
    work = spill.path.parent
    writes = _Writes(store, existing, work / "written.txt")
    lkey = latest_key(ref.name)
    latest: tuple[str, bytes | None] | None = None
    try:
        uploads = (_Upload(f"{ref.prefix}/{k}", sha, f) for k, sha, f in spill.uploads())
        todo = (u for u in uploads if u.key not in existing or not _same(store, u))
        with tqdm(total=total, desc=f"upload {ref}", unit="obj", disable=not progress) as bar:
            for _ in bounded_map(lambda u: _upload_one(u, writes), todo, workers):
                bar.update(1)
        writes.put(ref.info_key, json.dumps(info, indent=2, sort_keys=True).encode())
        spill.write_manifest(work / "manifest.parquet", ref.prefix)
        # the commit marker; read back whole here, when nothing else per image is held
        writes.put(ref.manifest_key, (work / "manifest.parquet").read_bytes())
        previous = store.get_bytes(lkey) if store.exists(lkey) else None
        latest = (lkey, previous)
        store.put_bytes(lkey, ref.version.encode())
    except BaseException as e:
        left = writes.undo(workers, latest)
        if not isinstance(e, Exception):
            raise  # Ctrl-C and friends: cleaned up, now let them through
        removed = writes.count - len(set(left))
        msg = (
            f"ingest of {ref} into {store.uri} failed: {e}. Removed the {removed} objects "
            "it had started to write"
        )
        if left:
            msg += f"; could not remove {len(left)} (e.g. {left[0]}): delete them by hand"
        raise IngestError(msg) from e
    finally:
        writes.close()


def _same(store: ArtifactStore, u: _Upload) -> bool:
    try:
        return store.sha256(u.key) == u.sha256
    except KeyNotFoundError:
        return False
