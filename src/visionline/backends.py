"""The one place a config becomes concrete backends: where training runs
(``compute.backend``) and where models are served (``deploy.target``). The CLI and the
flows call these and never name a backend themselves."""

from __future__ import annotations

from visionline.compute import ComputeBackend
from visionline.config import PipelineConfig
from visionline.serving.deploy import Deployer
from visionline.storage import ArtifactStore


def compute_backend(cfg: PipelineConfig) -> ComputeBackend:
    if cfg.compute.backend == "kubernetes":
        from visionline.compute.kubernetes import KubernetesBackend

        return KubernetesBackend(cfg)
    from visionline.compute.local import LocalBackend

    return LocalBackend(nproc=cfg.compute.nproc)


def deployer(cfg: PipelineConfig, store: ArtifactStore) -> Deployer:
    if cfg.deploy.target == "kubernetes":
        from visionline.serving.kubernetes import KubernetesDeployer

        return KubernetesDeployer(cfg, store)
    from visionline.serving.local import LocalDeployer

    return LocalDeployer(store, cfg.serve, cfg.deploy.workdir)
