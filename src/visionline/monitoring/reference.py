"""The reference every window is compared with: the run's validation split, described
by the trained model exactly as captures are, stored with the run the first time
monitoring needs it (packaging the run, or a check of a run packaged before that).

    runs/<run_id>/monitoring/projection.npy    the embedding projection (also in the .mar)
    runs/<run_id>/monitoring/reference.parquet one row per validation image
    runs/<run_id>/monitoring/reference.json    what it was built from; written last
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from visionline.config import PipelineConfig
from visionline.data.datasets import LocalCache
from visionline.data.manifest import DatasetRef, read_manifest
from visionline.errors import KeyNotFoundError, MonitoringError
from visionline.model.architectures import build_model
from visionline.model.predictor import Predictor
from visionline.model.runs import RunPaths, load_run_config, load_run_info
from visionline.monitoring.estimate import fit_estimator, store_estimator
from visionline.monitoring.features import (
    describe_images,
    feature_dim,
    make_projection,
    projection_from_bytes,
    projection_to_bytes,
)
from visionline.storage import ArtifactStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReferencePaths:
    run_id: str

    @property
    def prefix(self) -> str:
        return RunPaths(self.run_id).monitoring

    @property
    def projection(self) -> str:
        return f"{self.prefix}/projection.npy"

    @property
    def reference(self) -> str:
        return f"{self.prefix}/reference.parquet"

    @property
    def info(self) -> str:
        return f"{self.prefix}/reference.json"


def ensure_projection(store: ArtifactStore, run_id: str, cfg: PipelineConfig) -> np.ndarray:
    """The run's embedding projection, made once from the architecture's penultimate
    width and ``monitor.projection_seed``; the reference and the archive share it."""
    key = ReferencePaths(run_id).projection
    if store.exists(key):
        return projection_from_bytes(store.get_bytes(key, verify=True))
    # the width depends on the architecture only, so untrained weights tell it
    model = build_model(
        cfg.model.model_copy(update={"pretrained": None}), 2, cfg.data.channels, cfg.data.image_size
    )
    dim = feature_dim(model, (cfg.data.channels, cfg.data.image_size, cfg.data.image_size))
    p = make_projection(dim, cfg.monitor.embedding_dims, cfg.monitor.projection_seed)
    store.put_bytes(key, projection_to_bytes(p))
    return p


def reference_images(
    store: ArtifactStore, info: dict[str, Any], cfg: PipelineConfig
) -> tuple[str, pd.DataFrame]:
    """The validation images the reference describes (the test split when a dataset has
    no validation split), at most ``monitor.reference_size``, chosen by content hash."""
    m = read_manifest(store, DatasetRef(info["dataset_name"], info["dataset_version"]))
    usable = m[m["decodable"] & m["label"].isin(info["classes"])]
    for split in ("val", "test"):
        rows = usable[usable["split"] == split]
        if len(rows):
            return split, rows.sort_values("sha256").head(cfg.monitor.reference_size)
    raise MonitoringError(
        f"dataset {info['dataset']} has no validation or test images to build a reference from"
    )


def build_reference(
    store: ArtifactStore,
    run_id: str,
    predictor: Predictor,
    info: dict[str, Any],
    cfg: PipelineConfig,
) -> pd.DataFrame:
    """Describe the validation split with the run's predictor and store it as the run's
    reference."""
    paths = ReferencePaths(run_id)
    projection = ensure_projection(store, run_id, cfg)
    split, rows = reference_images(store, info, cfg)
    cache = LocalCache(store, cfg.data.cache_dir)
    cache.prefetch(rows["key"].tolist())
    described = describe_images(
        predictor,
        projection,
        ((k, cache.path(k).read_bytes()) for k in rows["key"]),
        max_pixels=cfg.data.max_image_pixels,
    )
    df = described.frame
    df["true_label"] = rows.set_index("key").loc[df["name"], "label"].to_numpy()
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    store.put_bytes(paths.reference, buf.getvalue())
    # the accuracy estimator is fitted on the same split, once, before the info marks
    # the reference complete
    store_estimator(store, run_id, fit_estimator(df))
    store.put_json(
        paths.info,
        {
            "run_id": run_id,
            "dataset": info["dataset"],
            "split": split,
            "images": len(df),
            "skipped": len(described.skipped),
            "embedding_dims": int(projection.shape[1]),
            "feature_dim": int(projection.shape[0]),
            "projection_seed": cfg.monitor.projection_seed,
            "classes": info["classes"],
            "channels": int(info["preprocessing"]["channels"]),
            "created": datetime.now(UTC).isoformat(),
        },
    )
    log.info("monitoring reference of %s: %d %s images", run_id, len(df), split)
    return df


def ensure_reference(store: ArtifactStore, run_id: str) -> None:
    """The run's reference, built once, from its own predictor and recorded config."""
    if store.exists(ReferencePaths(run_id).info):
        return
    build_reference(
        store,
        run_id,
        Predictor.from_run(store, run_id),
        load_run_info(store, run_id),
        load_run_config(store, run_id),
    )


def load_reference(store: ArtifactStore, run_id: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    paths = ReferencePaths(run_id)
    if not store.exists(paths.info):
        raise KeyNotFoundError(
            f"run {run_id} has no monitoring reference in {store.uri}: "
            f"package the run (`visionline package {run_id}`) or check its model "
            "(`visionline monitor check`) to build it"
        )
    df = pd.read_parquet(io.BytesIO(store.get_bytes(paths.reference, verify=True)))
    return df, store.get_json(paths.info)
