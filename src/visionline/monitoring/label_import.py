"""Labelled images merged into a new dataset version: our labelling queue's CSV with its
``label`` column filled, or a Label Studio JSON export. The new version is validated by
the Great Expectations gate and becomes the newest only if it passes. Images a queue
put in an arm (``chosen`` or ``control``, see ``visionline.monitoring.labels``) are
listed by arm in the new version's ``dataset.json`` (``arms``: sha256 in queue order),
which is what ``visionline labels report`` compares.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from visionline.config import PipelineConfig, SplitConfig
from visionline.data.ingest import dataset_version, inspect_file
from visionline.data.manifest import (
    MANIFEST_COLUMNS,
    DatasetRef,
    latest_key,
    manifest_to_bytes,
    read_manifest,
    resolve_dataset,
)
from visionline.data.sources import SourceFile
from visionline.data.validation import validate_dataset
from visionline.errors import MonitoringError
from visionline.storage import ArtifactStore, PutItem, sha256_bytes


@dataclass
class LabelledImage:
    where: str  # file:line or file:task id, for error messages
    source: str  # store key or local path of the image
    label: str
    request_id: str | None = None
    arm: str | None = None  # chosen or control, for images from a queue with a control arm


def _from_label_studio(path: Path, tasks: Any) -> tuple[list[LabelledImage], int]:
    if not isinstance(tasks, list):
        raise MonitoringError(f"{path}: a Label Studio export is a JSON list of tasks")
    out, unlabelled = [], 0
    for n, task in enumerate(tasks, start=1):
        where = f"{path}:task {task.get('id', n) if isinstance(task, dict) else n}"
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise MonitoringError(f"{where}: not a task with a 'data' object")
        annotations = [
            a
            for a in task.get("annotations") or []
            if not a.get("was_cancelled") and a.get("result")
        ]
        if not annotations:
            unlabelled += 1
            continue
        try:
            label = annotations[-1]["result"][0]["value"]["choices"][0]
        except (KeyError, IndexError, TypeError) as e:
            raise MonitoringError(f"{where}: annotation has no choices value") from e
        data = task["data"]
        source = data.get("key") or data.get("image")
        if not source:
            raise MonitoringError(f"{where}: the task names no image (data.key or data.image)")
        out.append(
            LabelledImage(where, str(source), str(label), data.get("request_id"), data.get("arm"))
        )
    return out, unlabelled


def _from_csv(path: Path) -> tuple[list[LabelledImage], int]:
    out, unlabelled = [], 0
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = set(reader.fieldnames or [])
        col = next((c for c in ("image", "key", "path") if c in fields), None)
        if col is None or "label" not in fields:
            raise MonitoringError(
                f"{path}: the header must have 'label' and 'image' (a store key or a path) "
                f"columns, found {sorted(fields)}"
            )
        for line, row in enumerate(reader, start=2):
            label, src = (row.get("label") or "").strip(), (row.get(col) or "").strip()
            if not label:
                unlabelled += 1
                continue
            if not src:
                raise MonitoringError(f"{path}:{line}: empty {col}")
            out.append(
                LabelledImage(
                    f"{path}:{line}", src, label, row.get("request_id") or None, row.get("arm")
                )
            )
    return out, unlabelled


def read_label_file(path: str | Path) -> tuple[list[LabelledImage], int]:
    """Our queue CSV with its ``label`` column filled, or a Label Studio JSON export.
    Returns the labelled images and how many were left unlabelled."""
    path = Path(path)
    if not path.is_file():
        raise MonitoringError(f"label file not found: {path}")
    if path.suffix.lower() == ".json":
        try:
            tasks = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise MonitoringError(f"{path}: not valid JSON ({e})") from e
        return _from_label_studio(path, tasks)
    return _from_csv(path)


def _image_bytes(store: ArtifactStore, item: LabelledImage, base: Path) -> bytes:
    src = item.source
    uri = store.uri.rstrip("/") + "/"
    key = src[len(uri) :] if src.startswith(uri) else src
    if not key.startswith(("/", "s3://")) and ".." not in key and store.exists(key):
        return store.get_bytes(key, verify=True)
    local = Path(src) if Path(src).is_absolute() else base / src
    if local.is_file():
        return local.read_bytes()
    raise MonitoringError(f"{item.where}: image {src!r} is neither in {store.uri} nor a file")


class _Bytes:
    """An ingestion origin holding one file's bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def get_bytes(self, loc: str) -> bytes:
        return self.data


@dataclass
class ImportResult:
    ref: DatasetRef | None
    parent: DatasetRef
    added: int
    unlabelled: int
    already_present: int
    created: bool
    validation: Any = None  # the GX ValidationReport
    notes: list[str] = field(default_factory=list)


def _new_rows(
    store: ArtifactStore,
    cfg: PipelineConfig,
    items: list[LabelledImage],
    base: Path,
    parent: DatasetRef,
    manifest: pd.DataFrame,
) -> tuple[list[dict[str, Any]], dict[str, bytes], int, dict[str, list[str]]]:
    """The manifest rows (and bytes, by key) of the images ``parent`` lacks, how many it
    has already, and the new images' sha256 by queue arm; an unknown class, a
    conflicting label or an unusable image is an error naming where it came from."""
    parent_info = store.get_json(parent.info_key)
    classes = list(parent_info["classes"])
    ratios = SplitConfig(**parent_info["split_ratios"])
    known = dict(zip(manifest["sha256"], manifest["label"], strict=False))
    rows, payloads, seen = [], {}, {}
    arms: dict[str, list[str]] = {}
    already = 0
    for item in items:
        if item.label not in classes:
            raise MonitoringError(
                f"{item.where}: label {item.label!r} is not a class of {parent} ({classes})"
            )
        data = _image_bytes(store, item, base)
        digest = sha256_bytes(data)
        if digest in seen and seen[digest][0] != item.label:
            raise MonitoringError(
                f"{item.where}: the same image is labelled {seen[digest][0]!r} at "
                f"{seen[digest][1]} and {item.label!r} here"
            )
        if digest in known or digest in seen:
            already += 1
            continue
        seen[digest] = (item.label, item.where)
        name = f"labels/{item.request_id or digest[:20]}{Path(item.source).suffix.lower()}"
        # the row ingestion would write for this file (key layout, split by hash)
        row = dict(
            zip(
                MANIFEST_COLUMNS,
                inspect_file(
                    SourceFile(name, item.label, None, _Bytes(data), name),
                    ratios,
                    cfg.data.max_image_pixels,
                ),
                strict=True,
            )
        )
        if not row["decodable"]:
            raise MonitoringError(f"{item.where}: not a usable image ({row['error']})")
        rows.append(row)
        payloads[row["key"]] = data
        if item.arm:
            arms.setdefault(item.arm, []).append(digest)
    return rows, payloads, already, arms


def import_labels(
    store: ArtifactStore, cfg: PipelineConfig, path: str | Path, dataset: str | None = None
) -> ImportResult:
    """Merge labelled images into a new version of the dataset (the newest version is
    the parent, recorded in dataset.json), validate it with the Great Expectations gate,
    and make it the newest version only if it passes."""
    path = Path(path)
    items, unlabelled = read_label_file(path)
    parent = resolve_dataset(store, dataset or cfg.data.dataset)
    parent_info = store.get_json(parent.info_key)
    classes = list(parent_info["classes"])
    ratios = SplitConfig(**parent_info["split_ratios"])
    manifest = read_manifest(store, parent)

    rows, payloads, already, arms = _new_rows(store, cfg, items, path.parent, parent, manifest)
    if not rows:
        return ImportResult(None, parent, 0, unlabelled, already, False, notes=["no new images"])

    new = pd.DataFrame(rows)
    # the version hashes sources, labels, splits and image hashes, not keys
    ref = DatasetRef(parent.name, dataset_version(pd.concat([manifest, new]), ratios, classes))
    new["key"] = ref.prefix + "/" + new["key"]  # parent rows keep their (immutable) keys
    merged = pd.concat([manifest, new], ignore_index=True).sort_values(["label", "source"])
    created = not store.exists(ref.manifest_key)
    if created:
        store.put_many([PutItem(f"{ref.prefix}/{k}", data=v) for k, v in payloads.items()])
        store.put_json(
            ref.info_key,
            {
                # a parent's arms are the parent's: this version lists its own
                **{k: v for k, v in parent_info.items() if k != "arms"},
                "version": ref.version,
                "parent": parent.version,
                "source": str(path),
                "added": len(new),
                "images": len(merged),
                "counts": {
                    s: merged[merged["split"] == s]["label"].value_counts().sort_index().to_dict()
                    for s in ("train", "val", "test")
                },
                "created": datetime.now(UTC).isoformat(),
                **({"arms": arms} if arms else {}),
            },
        )
        store.put_bytes(ref.manifest_key, manifest_to_bytes(merged))  # the commit marker
    report = validate_dataset(store, ref, cfg.with_overrides(**{"data.dataset": parent.name}))
    if report.success:
        store.put_bytes(latest_key(parent.name), ref.version.encode())
    return ImportResult(ref, parent, len(new), unlabelled, already, created, report)
