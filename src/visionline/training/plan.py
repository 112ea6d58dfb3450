"""The run plan: (config, store, dataset) -> the pinned config and the run id.

The CLI, the flows, the tuner and every compute backend plan a run here, so the same
training inputs always give the same run id and a run started one way is found (resumed
or reused) by any other.
"""

from __future__ import annotations

from dataclasses import dataclass

from visionline.config import PipelineConfig
from visionline.data.manifest import DatasetRef, resolve_dataset
from visionline.model.runs import check_run_id
from visionline.storage import ArtifactStore


@dataclass(frozen=True)
class RunPlan:
    cfg: PipelineConfig  # data.version pinned: a plan never means "whatever is newest"
    run_id: str
    dataset: DatasetRef


def dataset_spec(cfg: PipelineConfig) -> str:
    """``name`` (the newest version) or ``name:version`` when the config pins one."""
    return cfg.data.dataset + (f":{cfg.data.version}" if cfg.data.version else "")


def default_run_id(cfg: PipelineConfig, dataset_version: str) -> str:
    """Same config + same data -> same run id, so a re-run finds its finished work."""
    return f"{cfg.name}-{dataset_version}-{cfg.fingerprint()[:8]}"


def plan_run(
    cfg: PipelineConfig,
    store: ArtifactStore,
    dataset: DatasetRef | None = None,
    run_id: str | None = None,
) -> RunPlan:
    """Pin the dataset version into ``cfg`` and derive the run id (unless one is given)."""
    ref = dataset or resolve_dataset(store, dataset_spec(cfg))
    if (cfg.data.dataset, cfg.data.version) != (ref.name, ref.version):
        cfg = cfg.with_overrides(**{"data.dataset": ref.name, "data.version": ref.version})
    return RunPlan(cfg, check_run_id(run_id or default_run_id(cfg, ref.version)), ref)
