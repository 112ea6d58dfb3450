"""Ingestion: an ImageFolder (local or s3://) or a CSV of path,label -> store + manifest.

The dataset version is a hash of the content (labels, relative paths, image hashes and
split ratios), so the same data always lands under the same version and a second
ingest writes nothing.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import platform
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import pandas as pd
from tqdm.auto import tqdm

from visionline.config import SplitConfig
from visionline.data.images import IMAGE_EXTENSIONS, inspect_image
from visionline.data.manifest import (
    SPLITS,
    DatasetRef,
    latest_key,
    manifest_to_bytes,
)
from visionline.data.split import assign_split
from visionline.errors import IngestError
from visionline.storage import ArtifactStore, PutItem, S3Store, sha256_bytes
from visionline.version import code_version

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceFile:
    rel: str  # path relative to the source root, "/"-separated: what the manifest records
    label: str
    split: str | None  # predefined split, or None to derive it from the hash
    read: Callable[[], bytes]


@dataclass(frozen=True)
class IngestResult:
    ref: DatasetRef
    images: int
    undecodable: int
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
    classes: set[str] = set()
    for rel in rel_paths:
        parts = rel.split("/")
        if presplit:
            if len(parts) < 3:
                raise IngestError(f"{where}/{rel}: expected <split>/<class>/<file>")
            out.append((rel, parts[1], parts[0]))
            classes.add(parts[1])
        else:
            if len(parts) < 2:
                raise IngestError(
                    f"{where}/{rel}: images must sit in one folder per class "
                    "(<class>/<file>) or <split>/<class>/<file>"
                )
            out.append((rel, parts[0], None))
            classes.add(parts[0])
    for d in empty_dirs:
        parts = d.split("/")
        if presplit and len(parts) == 2:
            classes.add(parts[1])
        elif not presplit and len(parts) == 1:
            classes.add(parts[0])
    return out, sorted(classes)


def scan_local_folder(root: Path) -> tuple[list[SourceFile], list[str]]:
    if not root.is_dir():
        raise IngestError(f"source folder not found: {root}")
    rels, skipped, dirs = [], 0, []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        if p.is_dir():
            dirs.append(rel)
        elif _is_image(p.name):
            rels.append(rel)
        else:
            skipped += 1
    if skipped:
        log.warning("skipped %d files without an image extension under %s", skipped, root)
    empty = [d for d in dirs if not any(r.startswith(d + "/") for r in rels)]
    layout, classes = _folder_layout(rels, empty, str(root))
    files = [
        SourceFile(rel, label, split, (lambda p=root / rel: p.read_bytes()))
        for rel, label, split in layout
    ]
    return files, classes


def scan_s3_prefix(uri: str, s3_client: object | None) -> tuple[list[SourceFile], list[str]]:
    src = S3Store(uri, client=s3_client)
    rels = [k for k in src.list("") if _is_image(k)]
    layout, classes = _folder_layout(rels, [], uri)
    files = [
        SourceFile(rel, label, split, (lambda k=rel: src.get_bytes(k)))
        for rel, label, split in layout
    ]
    return files, classes


def scan_csv(path: Path, s3_client: object | None) -> tuple[list[SourceFile], list[str]]:
    if not path.is_file():
        raise IngestError(f"CSV not found: {path}")
    files: list[SourceFile] = []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = set(reader.fieldnames or [])
        if not {"path", "label"} <= fields:
            raise IngestError(f"{path}: the header must have 'path' and 'label' columns")
        for line, row in enumerate(reader, start=2):
            p, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
            split = (row.get("split") or "").strip() or None
            if not p or not label:
                raise IngestError(f"{path}:{line}: empty path or label")
            if split is not None and split not in SPLITS:
                raise IngestError(f"{path}:{line}: split {split!r} is not one of {SPLITS}")
            if p.startswith("s3://"):
                bucket, _, key = p[5:].partition("/")
                store = S3Store(f"s3://{bucket}", client=s3_client)
                files.append(SourceFile(p, label, split, (lambda s=store, k=key: s.get_bytes(k))))
            else:
                fp = Path(p) if Path(p).is_absolute() else path.parent / p
                files.append(SourceFile(p, label, split, (lambda q=fp: q.read_bytes())))
    if not files:
        raise IngestError(f"{path}: no rows")
    return files, sorted({f.label for f in files})


def scan_source(src: str, s3_client: object | None = None) -> tuple[list[SourceFile], list[str]]:
    if src.startswith("s3://"):
        return scan_s3_prefix(src, s3_client)
    p = Path(src)
    if p.suffix.lower() == ".csv":
        return scan_csv(p, s3_client)
    return scan_local_folder(p)


def _row(f: SourceFile, ratios: SplitConfig, max_pixels: int) -> tuple[dict, bytes]:
    try:
        data = f.read()
    except Exception as e:
        raise IngestError(f"cannot read {f.rel}: {e}") from e
    digest = sha256_bytes(data)
    info = inspect_image(data, max_pixels)
    ext = PurePosixPath(f.rel).suffix.lower() or ".bin"
    if info.decodable and info.format:
        ext = {
            "JPEG": ".jpg",
            "PNG": ".png",
            "WEBP": ".webp",
            "BMP": ".bmp",
            "GIF": ".gif",
            "TIFF": ".tif",
        }.get(info.format, ext)
    return {
        # Content-addressed inside the label folder: identical bytes share one object.
        "key": f"images/{f.label}/{digest[:20]}{ext}",
        "source": f.rel,
        "label": f.label,
        "sha256": digest,
        "bytes": len(data),
        "width": info.width,
        "height": info.height,
        "mode": info.mode,
        "format": info.format,
        "decodable": info.decodable,
        "error": info.error,
        "split": f.split or assign_split(digest, ratios),
    }, data


def dataset_version(df: pd.DataFrame, ratios: SplitConfig, classes: list[str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(ratios.model_dump(), sort_keys=True).encode())
    h.update(json.dumps(classes).encode())
    for rec in df.sort_values(["source", "sha256"])[
        ["source", "label", "split", "sha256"]
    ].itertuples(index=False):
        h.update("\t".join(rec).encode() + b"\n")
    return h.hexdigest()[:12]


def ingest(
    store: ArtifactStore,
    src: str,
    name: str,
    ratios: SplitConfig | None = None,
    max_pixels: int = 64_000_000,
    workers: int = 16,
    s3_client: object | None = None,
    progress: bool = True,
) -> IngestResult:
    """Ingest ``src`` as dataset ``name``; idempotent for identical content."""
    ratios = ratios or SplitConfig()
    files, classes = scan_source(src, s3_client)
    if not files:
        raise IngestError(f"no images found in {src}")

    rows: list[dict] = []
    payloads: dict[str, bytes] = {}
    bar = tqdm(total=len(files), desc=f"ingest {name}", unit="img", disable=not progress)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for row, data in pool.map(lambda f: _row(f, ratios, max_pixels), files):
            rows.append(row)
            payloads[row["key"]] = data
            bar.update(1)
    bar.close()

    df = pd.DataFrame(rows).sort_values(["label", "source"]).reset_index(drop=True)
    ref = DatasetRef(name, dataset_version(df, ratios, classes))
    undecodable = int((~df["decodable"]).sum())
    if store.exists(ref.manifest_key):
        log.info("dataset %s already in %s: nothing to write", ref, store.uri)
        return IngestResult(ref, len(df), undecodable, created=False)

    df["key"] = ref.prefix + "/" + df["key"]
    items = [PutItem(key=f"{ref.prefix}/{k}", data=v) for k, v in payloads.items()]
    bar = tqdm(total=len(items), desc=f"upload {ref}", unit="obj", disable=not progress)
    store.put_many(items, workers=workers, progress=bar.update)
    bar.close()

    info = {
        "name": name,
        "version": ref.version,
        "source": src,
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
    store.put_json(ref.info_key, info)
    store.put_bytes(ref.manifest_key, manifest_to_bytes(df))  # the commit marker, last
    store.put_bytes(latest_key(name), ref.version.encode())
    return IngestResult(ref, len(df), undecodable, created=True)
