"""The one place a config becomes concrete backends: where training runs
(``compute.backend``) and where models are served (``deploy.target``), for real or as the
objects a dry run prints. The CLI and the flows call these and never name a backend
themselves."""

from __future__ import annotations

from typing import Any

from visionline.compute import ComputeBackend
from visionline.compute.kubernetes import KubernetesBackend
from visionline.compute.local import LocalBackend
from visionline.config import PipelineConfig
from visionline.errors import ConfigError, ServingError
from visionline.registry import ModelRef
from visionline.serving.deploy import Deployer
from visionline.serving.kubernetes import KubernetesDeployer
from visionline.serving.kubernetes.rollout import KubernetesRollout
from visionline.serving.local import LocalDeployer
from visionline.serving.rollout.local import LocalRollout
from visionline.storage import ArtifactStore
from visionline.training.loop import fit
from visionline.training.plan import RunPlan


def _fit_here(plan: RunPlan, store: ArtifactStore, origin: dict[str, str] | None) -> None:
    fit(plan, store, origin)


def compute_backend(cfg: PipelineConfig) -> ComputeBackend:
    if cfg.compute.backend == "kubernetes":
        return KubernetesBackend(cfg)
    # with compute.nproc 1, LocalBackend.train runs the plan in this process
    return LocalBackend(nproc=cfg.compute.nproc, train_here=_fit_here)


def training_manifests(
    cfg: PipelineConfig, plan: RunPlan, store: ArtifactStore
) -> list[dict[str, Any]]:
    """The objects ``compute_backend(cfg)`` would create for ``plan``; nothing is created."""
    if cfg.compute.backend != "kubernetes":
        raise ConfigError(f"compute.backend {cfg.compute.backend} creates no objects to show")
    return KubernetesBackend(cfg).manifests(plan, store)


def deployer(cfg: PipelineConfig, store: ArtifactStore) -> Deployer:
    if cfg.deploy.target == "kubernetes":
        return KubernetesDeployer(cfg, store)
    return LocalDeployer(store, cfg.serve, cfg.deploy.workdir)


def local_server(
    cfg: PipelineConfig, store: ArtifactStore, workdir: str | None = None
) -> LocalDeployer:
    """The TorchServe on this machine (``visionline serve``), whatever deploy.target says."""
    return LocalDeployer(store, cfg.serve, workdir or cfg.deploy.workdir)


def rollout(
    cfg: PipelineConfig, store: ArtifactStore, workdir: str | None = None
) -> LocalRollout | KubernetesRollout:
    """The challenger beside the served champion (shadow or canary) on deploy.target."""
    if cfg.deploy.target == "kubernetes":
        return KubernetesRollout(cfg, store)
    return LocalRollout(local_server(cfg, store, workdir), store, cfg.deploy.rollout)


def ensure_no_rollout(cfg: PipelineConfig, store: ArtifactStore) -> None:
    """A plain deploy would drop a challenger from the front and leave it running (and,
    on Kubernetes, keep the rollout front's mount in the template it records for a
    rollback, naming a ConfigMap that goes with the challenger)."""
    state = rollout(cfg, store).state()
    if state:
        raise ServingError(
            f"a {state['mode']} rollout of {state['challenger']} is in progress: "
            "visionline rollout promote or visionline rollout abort first"
        )


def rollout_manifests(
    cfg: PipelineConfig, store: ArtifactStore, ref: ModelRef, mode: str, percent: float
) -> list[dict[str, Any]]:
    """The objects ``rollout(cfg, store).start`` would create and change; nothing changes."""
    if cfg.deploy.target != "kubernetes":
        raise ConfigError(f"deploy.target {cfg.deploy.target} applies no objects to show")
    return KubernetesRollout(cfg, store).manifests(ref, mode, percent)


def serving_manifests(
    cfg: PipelineConfig, store: ArtifactStore, ref: ModelRef
) -> list[dict[str, Any]]:
    """The objects ``deployer(cfg, store)`` would apply to serve ``ref``; nothing changes."""
    if cfg.deploy.target != "kubernetes":
        raise ConfigError(f"deploy.target {cfg.deploy.target} applies no objects to show")
    return KubernetesDeployer(cfg, store).manifests(ref)
