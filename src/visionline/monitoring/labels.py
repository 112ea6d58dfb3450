"""Labels after the fact: late feedback joined to captures, and the labelling queue
(active learning). Labelled images become a new dataset version in
``visionline.monitoring.label_import``.

    monitoring/<model>/feedback/<time>-<sha12>.parquet        request_id, label
    label-queue/<model>/<time>-<strategy>/{queue.csv, tasks.json, label_config.xml, images/}
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from visionline.data.images import inspect_image
from visionline.errors import MonitoringError
from visionline.monitoring.capture_windows import read_captures
from visionline.monitoring.check import resolve_model
from visionline.storage import ArtifactStore, PutItem, sha256_bytes

STRATEGIES = ("least-confidence", "margin", "entropy")
# The default of `label-queue --strategy`: the strategy whose mean test accuracy over
# four seeds reached random labelling's final accuracy (4,000 labels) with the fewest
# labels in the measured simulation (benchmarks/results/estimate.json,
# ``active_learning``; docs/monitoring.md): least confidence, 2,367 labels. Margin is as
# good within the seed spread (2,562 on the mean curve, fewer per seed, the highest final
# accuracy), entropy close behind (2,398). Least confidence and margin end above random
# in all four seeds, entropy in three.
DEFAULT_STRATEGY = "least-confidence"
# A queue's arms: the images the strategy chose, and a random sample of the same
# captures beside them (``--control``), so that labelling can be measured against chance
# (``visionline.monitoring.label_report``).
ARMS = ("chosen", "control")


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


def _queue_row(c: pd.Series, key: str, url: str, score: float, arm: str) -> dict[str, Any]:
    """One line of ``queue.csv``: the capture, its arm, its image, and an empty ``label``."""
    return {
        "request_id": c["request_id"],
        "arm": arm,
        "image": key,
        "url": url,
        "predicted": c["label"],
        "confidence": round(float(c["confidence"]), 6),
        "margin": round(float(c["margin"]), 6),
        "entropy": round(float(c["entropy"]), 6),
        "score": round(score, 6),
        "label": "",
    }


def _label_studio_task(c: pd.Series, rank: int, key: str, url: str, model: str, arm: str) -> dict:
    """One Label Studio task, pre-annotated with the model's prediction."""
    data = {"image": url, "key": key, "request_id": c["request_id"], "model": model, "arm": arm}
    return {
        "id": rank,
        "data": data,
        "predictions": [
            {
                "model_version": model,
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


def build_label_queue(
    store: ArtifactStore,
    spec: str,
    k: int,
    strategy: str,
    start: datetime | None = None,
    end: datetime | None = None,
    dedup: float = 0.1,
    control: float = 0.0,
    seed: int = 0,
) -> LabelQueue:
    """The ``k`` most informative captured images of the model not labelled yet, with
    near-duplicates removed, written to a labelling queue in the store; with
    ``control`` > 0, also ``round(control * k)`` (at least one) of the other candidates
    drawn uniformly at random (``seed``): the control arm."""
    if strategy not in STRATEGIES:
        raise MonitoringError(f"unknown strategy {strategy!r}: one of {', '.join(STRATEGIES)}")
    if k < 1:
        raise MonitoringError(f"--k must be at least 1, got {k}")
    if not 0.0 <= control <= 1.0:
        raise MonitoringError(f"--control is a fraction of --k within [0, 1], got {control}")
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
    picks = [(i, "chosen") for i in chosen] + [
        (i, "control") for i in control_sample(len(caps), chosen, control, k, seed)
    ]

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    prefix = f"label-queue/{ref.name}/{stamp}-{strategy}"
    rows, items, tasks = [], [], []
    for rank, (i, arm) in enumerate(picks, start=1):
        c = caps.iloc[i]
        data = bytes(c["image"])
        fmt = inspect_image(data).format
        key = f"{prefix}/images/{rank:04d}-{_safe(c['request_id'])}{_EXT.get(fmt or '', '.bin')}"
        items.append(PutItem(key, data=data))
        rows.append(_queue_row(c, key, store.url(key), float(scores[i]), arm))
        tasks.append(_label_studio_task(c, rank, key, store.url(key), str(ref), arm))
    store.put_many(items, workers=8)
    frame = pd.DataFrame(rows)
    store.put_bytes(f"{prefix}/label_config.xml", label_studio_config(info["classes"]).encode())
    store.put_bytes(f"{prefix}/tasks.json", json.dumps(tasks, indent=2).encode())
    store.put_bytes(f"{prefix}/queue.csv", frame.to_csv(index=False).encode())  # last
    return LabelQueue(prefix, frame, len(caps), near_dups)


def control_sample(n: int, chosen: list[int], control: float, k: int, seed: int) -> list[int]:
    """``round(control * k)`` (at least one when ``control`` > 0) of the ``n``
    candidates the strategy did not choose, uniformly at random: what labelling the
    chosen images is compared with."""
    if control <= 0:
        return []
    rest = np.setdiff1d(np.arange(n), chosen)
    size = min(len(rest), max(1, round(control * k)))
    if size == 0:
        raise MonitoringError(
            f"no captures left for a control arm: the strategy chose all {n}; lower --k"
        )
    return [int(i) for i in np.random.default_rng(seed).choice(rest, size, replace=False)]
