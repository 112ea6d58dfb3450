"""Labels after the fact: late feedback joined to captures, the labelling queue
(active learning), and labelled images merged into a new dataset version.

    monitoring/<model>/feedback/<time>-<sha12>.parquet        request_id, label
    label-queue/<model>/<time>-<strategy>/{queue.csv, tasks.json, label_config.xml, images/}
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from visionline.config import PipelineConfig, SplitConfig
from visionline.data.images import inspect_image
from visionline.data.ingest import SourceFile, _inspect, dataset_version
from visionline.data.manifest import (
    MANIFEST_COLUMNS,
    DatasetRef,
    latest_key,
    manifest_to_bytes,
    read_manifest,
    resolve_dataset,
)
from visionline.data.validation import validate_dataset
from visionline.errors import MonitoringError
from visionline.monitoring.capture_windows import read_captures
from visionline.monitoring.check import resolve_model
from visionline.storage import ArtifactStore, PutItem, sha256_bytes

STRATEGIES = ("least-confidence", "margin", "entropy")


# --------------------------------------------------------------------------- feedback
def read_feedback_file(path: str | Path, classes: list[str]) -> pd.DataFrame:
    """A CSV with ``request_id`` and ``label`` (or ``true_label``) columns."""
    path = Path(path)
    if not path.is_file():
        raise MonitoringError(f"feedback file not found: {path}")
    rows = []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = set(reader.fieldnames or [])
        label_col = "label" if "label" in fields else "true_label"
        if "request_id" not in fields or label_col not in fields:
            raise MonitoringError(
                f"{path}: the header must have 'request_id' and 'label' columns, "
                f"found {sorted(fields)}"
            )
        for line, row in enumerate(reader, start=2):
            rid, label = (row["request_id"] or "").strip(), (row[label_col] or "").strip()
            if not rid or not label:
                raise MonitoringError(f"{path}:{line}: empty request_id or label")
            if label not in classes:
                raise MonitoringError(
                    f"{path}:{line}: label {label!r} is not one of the model's classes {classes}"
                )
            rows.append({"request_id": rid, "label": label})
    if not rows:
        raise MonitoringError(f"{path}: no rows")
    return pd.DataFrame(rows).drop_duplicates("request_id", keep="last")


def feedback_prefix(model: str) -> str:
    return f"monitoring/{model}/feedback/"


def record_feedback(store: ArtifactStore, model: str, frame: pd.DataFrame) -> tuple[str, bool]:
    """Store one batch of labels; the same batch twice is stored once. (key, created)."""
    buf = io.BytesIO()
    frame[["request_id", "label"]].to_parquet(buf, index=False)
    data = buf.getvalue()
    digest = sha256_bytes(frame[["request_id", "label"]].to_csv(index=False).encode())[:12]
    for key in store.list(feedback_prefix(model)):
        if key.endswith(f"-{digest}.parquet"):
            return key, False
    key = f"{feedback_prefix(model)}{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{digest}.parquet"
    store.put_bytes(key, data)
    return key, True


def read_feedback(store: ArtifactStore, model: str) -> pd.DataFrame:
    """Every label received for ``model``; a later label for a request replaces an earlier."""
    frames = [
        pd.read_parquet(io.BytesIO(store.get_bytes(k)))
        for k in store.list(feedback_prefix(model))
        if k.endswith(".parquet")
    ]
    if not frames:
        return pd.DataFrame(columns=["request_id", "label"])
    return pd.concat(frames, ignore_index=True).drop_duplicates("request_id", keep="last")


def labelled_quality(
    store: ArtifactStore,
    model: str,
    version: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> dict[str, Any]:
    """Labels joined to captures (by request id) of one version or all, in a window:
    accuracy and per-class recall; ``unmatched`` labels name no capture in it."""
    labels = read_feedback(store, model)
    caps = read_captures(
        store, model, version, start, end, columns=["request_id", "time", "model_version", "label"]
    )
    if caps.empty or labels.empty:
        return {
            "n": 0,
            "unmatched": len(labels),
            "accuracy": None,
            "per_class": {},
            "by_version": {},
        }
    caps = caps.drop_duplicates("request_id", keep="last")
    joined = caps.merge(labels, on="request_id", suffixes=("_pred", "_true"))
    out: dict[str, Any] = {"n": len(joined), "unmatched": len(labels) - len(joined)}
    if joined.empty:
        return {**out, "accuracy": None, "per_class": {}, "by_version": {}}
    correct = joined["label_pred"] == joined["label_true"]
    out["accuracy"] = float(correct.mean())
    out["per_class"] = {
        c: {"recall": float(correct[g.index].mean()), "support": len(g)}
        for c, g in joined.groupby("label_true")
    }
    out["by_version"] = {
        str(v): {"n": len(g), "accuracy": float(correct[g.index].mean())}
        for v, g in joined.groupby("model_version")
    }
    return out


# --------------------------------------------------------------------------- the queue
def informativeness(frame: pd.DataFrame, strategy: str) -> np.ndarray:
    """Higher is more worth labelling: least-confidence 1 - p(top), margin -(p(top) -
    p(second)), entropy of the predicted distribution."""
    if strategy == "least-confidence":
        return 1.0 - frame["confidence"].to_numpy(float)
    if strategy == "margin":
        return -frame["margin"].to_numpy(float)
    if strategy == "entropy":
        return frame["entropy"].to_numpy(float)
    raise MonitoringError(f"unknown strategy {strategy!r}: one of {', '.join(STRATEGIES)}")


def select_diverse(
    scores: np.ndarray, embeddings: np.ndarray, k: int, dedup: float = 0.1
) -> list[int]:
    """The ``k`` highest scores, greedily, skipping any item closer than ``dedup`` times
    the median pairwise embedding distance to one already chosen (near-duplicates)."""
    order = np.argsort(-scores, kind="stable")
    if len(order) == 0 or k <= 0:
        return []
    emb = np.asarray(embeddings, dtype=np.float64)
    sample = emb[order[:1000]]
    d = np.sqrt(((sample[:, None, :] - sample[None, :, :]) ** 2).sum(-1))
    off = d[~np.eye(len(sample), dtype=bool)]
    threshold = dedup * (float(np.median(off)) if off.size else 0.0)
    chosen: list[int] = []
    for i in order:
        if chosen and np.sqrt(((emb[chosen] - emb[i]) ** 2).sum(1)).min() <= threshold:
            continue
        chosen.append(int(i))
        if len(chosen) == k:
            break
    return chosen


@dataclass
class LabelQueue:
    prefix: str
    rows: pd.DataFrame
    candidates: int
    near_duplicates: int


_EXT = {
    "JPEG": ".jpg",
    "PNG": ".png",
    "WEBP": ".webp",
    "BMP": ".bmp",
    "GIF": ".gif",
    "TIFF": ".tif",
}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:120] or "image"


def label_studio_config(classes: list[str]) -> str:
    choices = "\n".join(f'    <Choice value="{c}"/>' for c in classes)
    return (
        '<View>\n  <Image name="image" value="$image"/>\n'
        f'  <Choices name="label" toName="image" choice="single">\n{choices}\n'
        "  </Choices>\n</View>\n"
    )


def build_label_queue(
    store: ArtifactStore,
    spec: str,
    k: int,
    strategy: str,
    start: datetime | None = None,
    end: datetime | None = None,
    dedup: float = 0.1,
) -> LabelQueue:
    """The ``k`` most informative captured images of the model not labelled yet, with
    near-duplicates removed, written to a labelling queue in the store."""
    if strategy not in STRATEGIES:
        raise MonitoringError(f"unknown strategy {strategy!r}: one of {', '.join(STRATEGIES)}")
    if k < 1:
        raise MonitoringError(f"--k must be at least 1, got {k}")
    ref, info = resolve_model(store, spec)
    caps = read_captures(store, ref.name, ref.version, start, end)
    if caps.empty or "image" not in caps or caps["image"].isna().all():
        raise MonitoringError(
            f"no captured images of {ref} in {store.uri}: set monitor.capture_images: true "
            "(it is packaged into the archive) and let the model serve some traffic"
        )
    caps = caps[caps["image"].notna()].drop_duplicates("request_id", keep="last")
    done = set(read_feedback(store, ref.name)["request_id"])
    caps = caps[~caps["request_id"].isin(done)].reset_index(drop=True)
    if caps.empty:
        raise MonitoringError(f"every captured image of {ref} is labelled already")
    scores = informativeness(caps, strategy)
    chosen = select_diverse(scores, np.stack(caps["embedding"].to_numpy()), k, dedup)
    ranked = np.argsort(-scores, kind="stable")
    near_dups = int(
        np.sum(np.isin(ranked[: ranked.tolist().index(chosen[-1]) + 1], chosen, invert=True))
    )

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    prefix = f"label-queue/{ref.name}/{stamp}-{strategy}"
    rows, items, tasks = [], [], []
    for rank, i in enumerate(chosen, start=1):
        c = caps.iloc[i]
        data = bytes(c["image"])
        fmt = inspect_image(data).format
        key = f"{prefix}/images/{rank:04d}-{_safe(c['request_id'])}{_EXT.get(fmt or '', '.bin')}"
        items.append(PutItem(key, data=data))
        rows.append(
            {
                "request_id": c["request_id"],
                "image": key,
                "url": store.url(key),
                "predicted": c["label"],
                "confidence": round(float(c["confidence"]), 6),
                "margin": round(float(c["margin"]), 6),
                "entropy": round(float(c["entropy"]), 6),
                "score": round(float(scores[i]), 6),
                "label": "",
            }
        )
        tasks.append(
            {
                "id": rank,
                "data": {
                    "image": store.url(key),
                    "key": key,
                    "request_id": c["request_id"],
                    "model": str(ref),
                },
                "predictions": [
                    {
                        "model_version": str(ref),
                        "score": float(c["confidence"]),
                        "result": [
                            {
                                "from_name": "label",
                                "to_name": "image",
                                "type": "choices",
                                "value": {"choices": [c["label"]]},
                            }
                        ],
                    }
                ],
            }
        )
    store.put_many(items, workers=8)
    frame = pd.DataFrame(rows)
    store.put_bytes(f"{prefix}/label_config.xml", label_studio_config(info["classes"]).encode())
    store.put_bytes(f"{prefix}/tasks.json", json.dumps(tasks, indent=2).encode())
    store.put_bytes(f"{prefix}/queue.csv", frame.to_csv(index=False).encode())  # last
    return LabelQueue(prefix, frame, len(caps), near_dups)


# --------------------------------------------------------------------------- import
@dataclass
class LabelledImage:
    where: str  # file:line or file:task id, for error messages
    source: str  # store key or local path of the image
    label: str
    request_id: str | None = None


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
        out.append(LabelledImage(where, str(source), str(label), data.get("request_id")))
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
            out.append(LabelledImage(f"{path}:{line}", src, label, row.get("request_id") or None))
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
    known = dict(zip(manifest["sha256"], manifest["label"], strict=False))

    rows, payloads, seen = [], {}, {}
    already = 0
    for item in items:
        if item.label not in classes:
            raise MonitoringError(
                f"{item.where}: label {item.label!r} is not a class of {parent} ({classes})"
            )
        data = _image_bytes(store, item, path.parent)
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
                _inspect(
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
                **parent_info,
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
            },
        )
        store.put_bytes(ref.manifest_key, manifest_to_bytes(merged))  # the commit marker
    report = validate_dataset(store, ref, cfg.with_overrides(**{"data.dataset": parent.name}))
    if report.success:
        store.put_bytes(latest_key(parent.name), ref.version.encode())
    return ImportResult(ref, parent, len(new), unlabelled, already, created, report)
