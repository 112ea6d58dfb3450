"""Phase 1 of an ingest (see ``visionline.data.ingest``): list a source and check every
name and place before any byte is read.

A source is an ImageFolder (``class/x`` or ``split/class/x``, local or ``s3://``) or a
CSV of ``path,label[,split]``. Labels and the dataset name must be safe store-key
components, and every file a CSV (or a symlink in a folder) names must lie inside the
source's own folder, or inside a place the caller allowed explicitly (``allow_outside``).
"""

from __future__ import annotations

import csv
import logging
import os
import unicodedata
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from visionline.data.images import IMAGE_EXTENSIONS
from visionline.data.manifest import SPLITS
from visionline.errors import IngestError
from visionline.storage import S3Store

log = logging.getLogger(__name__)

# A label is a folder name on disk and a key component in S3: 255 bytes is the common
# file-name limit, so a longer label could be stored in S3 but not mirrored locally.
MAX_NAME_BYTES = 255
_INVISIBLE = {"Cc", "Cf", "Cs", "Zl", "Zp"}  # control, formatting (bidi), separators

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


def _is_image(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS


class _Layout:
    """Maps relative paths to (label, split) for ``class/x`` or ``split/class/x``, one at
    a time; ``tops`` are the first path components (folders and top-level images)."""

    def __init__(self, tops: set[str], where: str) -> None:
        self.presplit = bool(tops) and tops <= set(SPLITS)
        self.where = where
        self.classes: dict[str, str] = {}  # also the one shared copy of each label string

    def place(self, rel: str) -> tuple[str, str | None]:
        parts = rel.split("/")
        if self.presplit:
            if len(parts) < 3:
                raise IngestError(f"{self.where}/{rel}: expected <split>/<class>/<file>")
            label, split = parts[1], parts[0]
        else:
            if len(parts) < 2:
                raise IngestError(
                    f"{self.where}/{rel}: images must sit in one folder per class "
                    "(<class>/<file>) or <split>/<class>/<file>"
                )
            label, split = parts[0], None
        if label not in self.classes:
            self.classes[label] = check_label(label, f"{self.where}/{rel}")
        return self.classes[label], split and _SPLIT[split]

    def empty_dirs(self, empty: Iterable[str]) -> list[str]:
        """Add the class folders among ``empty`` (folders without images); all classes."""
        for d in empty:
            parts = d.split("/")
            if (self.presplit and len(parts) == 2) or (not self.presplit and len(parts) == 1):
                self.classes.setdefault(parts[-1], check_label(parts[-1], f"{self.where}/{d}"))
        return sorted(self.classes)


class Scan:
    """A source's files in scan order, found as they are iterated (nothing per file is
    kept here), and its sorted classes once the iteration has ended."""

    def __init__(self, files: Generator[SourceFile, None, list[str]]) -> None:
        self._files = files
        self.classes: list[str] | None = None

    def __iter__(self) -> Iterator[SourceFile]:
        self.classes = yield from self._files


def _outside(what: str, target: Path | str, home: str, flag_hint: str) -> IngestError:
    return IngestError(
        f"{what}: {target} is outside {home}; files are read only from there unless you "
        f"allow another place explicitly ({flag_hint})"
    )


def _top_names(root: Path) -> set[str]:
    """The first path components the layout is decided by, as ``os.walk`` classifies
    them: every visible folder (an empty one names a class), and visible images."""
    tops: set[str] = set()
    with os.scandir(root) as entries:
        for e in entries:
            if e.name.startswith("."):
                continue
            if e.is_dir() or _is_image(e.name):
                tops.add(e.name)
    return tops


def scan_local_folder(
    root: Path, allowed: AllowedRoots | None = None
) -> Generator[SourceFile, None, list[str]]:
    if not root.is_dir():
        raise IngestError(f"source folder not found: {root}")
    return _walk_folder(root, allowed or AllowedRoots())


def _walk_folder(root: Path, allowed: AllowedRoots) -> Generator[SourceFile, None, list[str]]:
    home = root.resolve()
    layout = _Layout(_top_names(root), str(root))
    origin = _Folder(str(root))
    dirs: list[str] = []
    under: set[str] = set()  # folders with an image somewhere beneath
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
            if base and base[:-1] not in under:
                under.add(base[:-1])
                under.update(_parents(base[:-1]))
            label, split = layout.place(rel)
            yield SourceFile(rel, label, split, origin, rel)
    if skipped:
        log.warning("skipped %d files without an image extension under %s", skipped, root)
    return layout.empty_dirs(d for d in dirs if d not in under)


def _parents(rel_dir: str) -> Iterator[str]:
    parts = rel_dir.split("/")
    for i in range(1, len(parts)):
        yield "/".join(parts[:i])


def scan_s3_prefix(uri: str, s3_client: object | None) -> Generator[SourceFile, None, list[str]]:
    src = S3Store(uri, client=s3_client)
    # the listing arrives whole (sorted), so the keys are checked before any is used
    rels = [k for k in src.list("") if _is_image(k)]
    for rel in rels:
        if _unsafe_key(rel):
            raise IngestError(f"{uri}/{rel}: a key with empty, '.' or '..' segments is ambiguous")
    layout = _Layout({r.split("/", 1)[0] for r in rels}, uri)
    for rel in rels:
        label, split = layout.place(rel)
        yield SourceFile(rel, label, split, src, rel)
    return layout.empty_dirs(())


def scan_csv(
    path: Path, s3_client: object | None, allowed: AllowedRoots | None = None
) -> Generator[SourceFile, None, list[str]]:
    if not path.is_file():
        raise IngestError(f"CSV not found: {path}")
    return _read_csv(path, s3_client, allowed or AllowedRoots())


def _read_csv(
    path: Path, s3_client: object | None, allowed: AllowedRoots
) -> Generator[SourceFile, None, list[str]]:
    home = path.parent.resolve()
    labels: set[str] = set()
    buckets: dict[str, S3Store] = {}  # one client per bucket, not one per row
    anywhere = _Folder()
    origin: _Origin
    rows = 0
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
            labels.add(label)
            rows += 1
            yield SourceFile(p, label, split, origin, loc)
    if not rows:
        raise IngestError(f"{path}: no rows")
    return sorted(labels)


def iter_source(
    src: str,
    s3_client: object | None = None,
    allow_outside: Sequence[str | Path] = (),
) -> Scan:
    """``src``'s files as they are found (an ingest spills them as they come)."""
    allowed = AllowedRoots.parse(allow_outside)
    if src.startswith("s3://"):
        return Scan(scan_s3_prefix(src, s3_client))
    p = Path(src)
    if p.suffix.lower() == ".csv":
        return Scan(scan_csv(p, s3_client, allowed))
    return Scan(scan_local_folder(p, allowed))


def scan_source(
    src: str,
    s3_client: object | None = None,
    allow_outside: Sequence[str | Path] = (),
) -> tuple[list[SourceFile], list[str]]:
    """``src``'s files in a list, and its classes."""
    scan = iter_source(src, s3_client, allow_outside)
    files = list(scan)
    return files, scan.classes or []
