"""Ingestion: an ImageFolder (local or s3://) or a CSV of path,label -> store + manifest.

The dataset version is a hash of the content (labels, relative paths, image hashes and
split ratios), so the same data always lands under the same version and a second
ingest writes nothing.

An ingest runs in three phases, and only the last two write:

1. **scan**: list the source and check every name before any byte is read: labels and
   the dataset name must be safe store-key components, and every file a CSV (or a
   symlink in a folder) names must lie inside the source's own folder, or inside a
   place the caller allowed explicitly (``allow_outside``).
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
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import platform
import threading
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Protocol

import pandas as pd
from tqdm.auto import tqdm

from visionline.config import SplitConfig
from visionline.data.images import IMAGE_EXTENSIONS, inspect_image
from visionline.data.manifest import (
    MANIFEST_COLUMNS,
    SPLITS,
    DatasetRef,
    latest_key,
    manifest_to_bytes,
)
from visionline.data.split import assign_split
from visionline.data.stream import bounded_map
from visionline.errors import IngestError, KeyNotFoundError
from visionline.storage import ArtifactStore, S3Store, sha256_bytes
from visionline.version import code_version

log = logging.getLogger(__name__)


# A label is a folder name on disk and a key component in S3: 255 bytes is the common
# file-name limit, so a longer label could be stored in S3 but not mirrored locally.
MAX_NAME_BYTES = 255
_INVISIBLE = {"Cc", "Cf", "Cs", "Zl", "Zp"}  # control, formatting (bidi), separators
_FORMAT_EXT = {
    "JPEG": ".jpg",
    "MPO": ".jpg",
    "PNG": ".png",
    "WEBP": ".webp",
    "BMP": ".bmp",
    "GIF": ".gif",
    "TIFF": ".tif",
}


_SPLIT = {s: s for s in SPLITS}


# --------------------------------------------------------------------------- names
def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be one component of a store key, or None if it can."""
    if not name:
        return "is empty"
    if name != name.strip():
        return "has leading or trailing whitespace"
    if "/" in name or "\\" in name:
        return "contains a path separator ('/' or '\\')"
    if ".." in name:
        return "contains '..'"
    if name.startswith("."):
        return "starts with '.' (hidden and reserved names)"
    for c in name:
        if unicodedata.category(c) in _INVISIBLE:
            return f"contains a control or invisible character (U+{ord(c):04X})"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    return None


def check_label(label: str, where: str) -> str:
    problem = name_problem(label)
    if problem:
        raise IngestError(f"{where}: label {label!r} {problem}; rename it")
    return label


def check_dataset_name(name: str) -> str:
    problem = name_problem(name) or (
        "contains ':' (NAME:VERSION separates the version)" if ":" in name else None
    )
    if problem:
        raise IngestError(f"dataset name {name!r} {problem}")
    return name


# --------------------------------------------------------------------------- where files may come from
@dataclass(frozen=True)
class AllowedRoots:
    """Places a source may read from besides its own folder (or S3 prefix)."""

    local: tuple[Path, ...] = ()
    s3: tuple[tuple[str, str], ...] = ()  # (bucket, key prefix without trailing '/')

    @classmethod
    def parse(cls, values: Iterable[str | Path]) -> AllowedRoots:
        local: list[Path] = []
        s3: list[tuple[str, str]] = []
        for v in values:
            v = str(v)
            if v.startswith("s3://"):
                bucket, _, prefix = v[5:].partition("/")
                if not bucket:
                    raise IngestError(f"--allow-outside {v!r}: no bucket")
                s3.append((bucket, prefix.strip("/")))
            elif "://" in v:
                raise IngestError(
                    f"--allow-outside {v!r}: use a local folder or s3://bucket/prefix"
                )
            else:
                local.append(Path(v).expanduser().resolve())
        return cls(tuple(local), tuple(s3))

    def has_path(self, resolved: Path) -> bool:
        return any(resolved.is_relative_to(root) for root in self.local)

    def has_key(self, bucket: str, key: str) -> bool:
        return any(b == bucket and (not p or key.startswith(p + "/")) for b, p in self.s3)


def _unsafe_key(key: str) -> bool:
    # S3 keys are literal strings, but some servers and proxies normalise dot segments:
    # a key that could mean two things is refused instead of guessed.
    return not key or any(part in ("", ".", "..") for part in key.split("/"))


# --------------------------------------------------------------------------- sources
class _Folder:
    """Reads files by path, relative to ``root`` (or absolute when root is empty)."""

    def __init__(self, root: str = "") -> None:
        self.root = root

    def get_bytes(self, loc: str) -> bytes:
        with open(os.path.join(self.root, loc), "rb") as f:
            return f.read()


class _Origin(Protocol):
    def get_bytes(self, loc: str) -> bytes: ...


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One file to ingest. Kept small (shared origin, no closures): ingest holds one per
    file for its whole run."""

    rel: str  # path relative to the source root, "/"-separated: what the manifest records
    label: str
    split: str | None  # predefined split, or None to derive it from the hash
    origin: _Origin  # shared by all files of one folder, bucket or CSV
    loc: str  # where the origin finds it: a path or key

    def read(self) -> bytes:
        return self.origin.get_bytes(self.loc)


@dataclass(frozen=True)
class IngestResult:
    ref: DatasetRef
    images: int
    undecodable: int  # refused files: recorded in the manifest, not copied
    created: bool  # False when this exact version already existed


def _is_image(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS


def _folder_layout(
    rel_paths: list[str], empty_dirs: list[str], where: str
) -> tuple[list[tuple[str, str, str | None]], list[str]]:
    """Map relative paths to (rel, label, split) for ``class/x`` or ``split/class/x``."""
    tops = {p.split("/", 1)[0] for p in rel_paths} | {d.split("/", 1)[0] for d in empty_dirs}
    presplit = bool(tops) and tops <= set(SPLITS)
    out: list[tuple[str, str, str | None]] = []
    classes: dict[str, str] = {}  # also the one shared copy of each label string
    for rel in rel_paths:
        parts = rel.split("/")
        if presplit:
            if len(parts) < 3:
                raise IngestError(f"{where}/{rel}: expected <split>/<class>/<file>")
            label, split = parts[1], parts[0]
        else:
            if len(parts) < 2:
                raise IngestError(
                    f"{where}/{rel}: images must sit in one folder per class "
                    "(<class>/<file>) or <split>/<class>/<file>"
                )
            label, split = parts[0], None
        if label not in classes:
            classes[label] = check_label(label, f"{where}/{rel}")
        out.append((rel, classes[label], split and _SPLIT[split]))
    for d in empty_dirs:
        parts = d.split("/")
        if (presplit and len(parts) == 2) or (not presplit and len(parts) == 1):
            classes.setdefault(parts[-1], check_label(parts[-1], f"{where}/{d}"))
    return out, sorted(classes)


def _outside(what: str, target: Path | str, home: str, flag_hint: str) -> IngestError:
    return IngestError(
        f"{what}: {target} is outside {home}; files are read only from there unless you "
        f"allow another place explicitly ({flag_hint})"
    )


def scan_local_folder(
    root: Path, allowed: AllowedRoots | None = None
) -> tuple[list[SourceFile], list[str]]:
    if not root.is_dir():
        raise IngestError(f"source folder not found: {root}")
    allowed = allowed or AllowedRoots()
    home = root.resolve()
    rels: list[str] = []
    dirs: list[str] = []
    skipped = 0
    # os.walk, not rglob: plain strings instead of a Path object per file keep a scan of
    # many thousands of files small. Symlinked folders are listed, never entered.
    for dirpath, dirnames, filenames in os.walk(root):
        base = os.path.relpath(dirpath, root)
        base = "" if base == "." else base.replace(os.sep, "/") + "/"
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for d in dirnames:
            if os.path.islink(os.path.join(dirpath, d)):
                log.warning("%s/%s%s: a symlinked folder is not followed", root, base, d)
            dirs.append(base + d)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            if not _is_image(name):
                skipped += 1
                continue
            rel, full = base + name, os.path.join(dirpath, name)
            if os.path.islink(full):
                # Followed only where it stays at home (or somewhere allowed): a link to
                # /etc/passwd named cat/x.png must not be read.
                target = Path(full).resolve()
                if not (target.is_relative_to(home) or allowed.has_path(target)):
                    raise _outside(
                        f"{root}/{rel}", target, str(home), f"--allow-outside {target.parent}"
                    )
            if not os.path.isfile(full):
                raise IngestError(f"{root}/{rel}: not a regular file")
            rels.append(rel)
    if skipped:
        log.warning("skipped %d files without an image extension under %s", skipped, root)
    under = {r.rsplit("/", 1)[0] for r in rels}
    under |= {d for r in under for d in _parents(r)}
    empty = [d for d in dirs if d not in under]
    layout, classes = _folder_layout(rels, empty, str(root))
    origin = _Folder(str(root))
    files = [SourceFile(rel, label, split, origin, rel) for rel, label, split in layout]
    return files, classes


def _parents(rel_dir: str) -> Iterator[str]:
    parts = rel_dir.split("/")
    for i in range(1, len(parts)):
        yield "/".join(parts[:i])


def scan_s3_prefix(uri: str, s3_client: object | None) -> tuple[list[SourceFile], list[str]]:
    src = S3Store(uri, client=s3_client)
    rels = [k for k in src.list("") if _is_image(k)]
    for rel in rels:
        if _unsafe_key(rel):
            raise IngestError(f"{uri}/{rel}: a key with empty, '.' or '..' segments is ambiguous")
    layout, classes = _folder_layout(rels, [], uri)
    files = [SourceFile(rel, label, split, src, rel) for rel, label, split in layout]
    return files, classes


def scan_csv(
    path: Path, s3_client: object | None, allowed: AllowedRoots | None = None
) -> tuple[list[SourceFile], list[str]]:
    if not path.is_file():
        raise IngestError(f"CSV not found: {path}")
    allowed = allowed or AllowedRoots()
    home = path.parent.resolve()
    buckets: dict[str, S3Store] = {}  # one client per bucket, not one per row
    anywhere = _Folder()
    origin: _Origin
    files: list[SourceFile] = []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = set(reader.fieldnames or [])
        if not {"path", "label"} <= fields:
            raise IngestError(f"{path}: the header must have 'path' and 'label' columns")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            p, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
            split = (row.get("split") or "").strip() or None
            if not p or not label:
                raise IngestError(f"{where}: empty path or label")
            check_label(label, where)
            if split is not None and split not in SPLITS:
                raise IngestError(f"{where}: split {split!r} is not one of {SPLITS}")
            if p.startswith("s3://"):
                bucket, _, key = p[5:].partition("/")
                if not bucket or _unsafe_key(key):
                    raise IngestError(f"{where}: {p!r} is not a usable s3://bucket/key")
                if not allowed.has_key(bucket, key):
                    raise _outside(
                        where,
                        p,
                        f"the CSV's folder {home}",
                        f"--allow-outside s3://{bucket}/{key.rsplit('/', 1)[0]}",
                    )
                if bucket not in buckets:
                    buckets[bucket] = S3Store(f"s3://{bucket}", client=s3_client)
                origin, loc = buckets[bucket], key
            else:
                given = Path(p).expanduser()
                # resolve() follows symlinks: where the bytes really are is what counts.
                real = (given if given.is_absolute() else path.parent / given).resolve()
                if not (real.is_relative_to(home) or allowed.has_path(real)):
                    raise _outside(
                        where,
                        real,
                        f"the CSV's folder {home}",
                        f"--allow-outside {real.parent}",
                    )
                if not real.exists():
                    raise IngestError(f"{where}: file not found: {real}")
                if not real.is_file():
                    # devices and FIFOs never end or block: refuse before reading
                    raise IngestError(f"{where}: {real} is not a regular file")
                origin, loc = anywhere, str(real)
            files.append(SourceFile(p, label, split, origin, loc))
    if not files:
        raise IngestError(f"{path}: no rows")
    return files, sorted({f.label for f in files})


def scan_source(
    src: str,
    s3_client: object | None = None,
    allow_outside: Sequence[str | Path] = (),
) -> tuple[list[SourceFile], list[str]]:
    allowed = AllowedRoots.parse(allow_outside)
    if src.startswith("s3://"):
        return scan_s3_prefix(src, s3_client)
    p = Path(src)
    if p.suffix.lower() == ".csv":
        return scan_csv(p, s3_client, allowed)
    return scan_local_folder(p, allowed)


# --------------------------------------------------------------------------- inspect
def _inspect(f: SourceFile, ratios: SplitConfig, max_pixels: int) -> tuple:
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
) -> IngestResult:
    """Ingest ``src`` as dataset ``name``; idempotent for identical content.

    ``allow_outside``: local folders or ``s3://bucket/prefix`` places that files listed
    in a CSV (or symlinks in a folder) may come from besides the source's own folder.
    Either everything is written, or nothing this call created is left in the store.
    """
    ratios = ratios or SplitConfig()
    check_dataset_name(name)
    files, classes = scan_source(src, s3_client, allow_outside)
    if not files:
        raise IngestError(f"no images found in {src}")

    rows: list[tuple] = []
    with tqdm(total=len(files), desc=f"inspect {name}", unit="img", disable=not progress) as bar:
        for row in bounded_map(lambda f: _inspect(f, ratios, max_pixels), files, workers):
            rows.append(row)
            bar.update(1)

    df = pd.DataFrame.from_records(rows, columns=MANIFEST_COLUMNS)
    df["_file"] = range(len(df))  # index into files (not written: not a manifest column)
    df = df.sort_values(["label", "source"]).reset_index(drop=True)
    del rows
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
        return IngestResult(ref, len(df), undecodable, created=False)

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
        "created": datetime.now(UTC).isoformat(),
        "code_version": code_version(),
        "python": platform.python_version(),
    }

    # Objects already under this version's prefix (a concurrent or interrupted ingest of
    # the same content) are content-addressed, so they are reused and never deleted.
    existing = set(store.list(ref.prefix + "/"))
    writes = _Writes(store, existing)
    lkey = latest_key(name)
    latest: tuple[str, bytes | None] | None = None
    try:
        todo = (
            u
            for u in (
                _Upload(f"{ref.prefix}/{k}", sha, files[i])
                for k, sha, i in kept.itertuples(index=False)
            )
            if u.key not in existing or not _same(store, u)
        )
        with tqdm(total=len(kept), desc=f"upload {ref}", unit="obj", disable=not progress) as bar:
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
    return IngestResult(ref, len(df), undecodable, created=True)


def _same(store: ArtifactStore, u: _Upload) -> bool:
    try:
        return store.sha256(u.key) == u.sha256
    except KeyNotFoundError:
        return False
