"""Deployment behind one interface: put a registered model in service, check it, and
promote it, or put the previous champion back.

This issue delivers the local TorchServe deployer; the Kubernetes rollout implements the
same ``Deployer`` protocol.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from visionline.config import ServeConfig
from visionline.errors import ServingError
from visionline.registry import ModelRef, Registry
from visionline.serving.client import InferenceClient, RestClient
from visionline.serving.local import fetch_mar
from visionline.serving.parity import ParityReport, parity_check
from visionline.serving.torchserve import Endpoints, ServedModel, TorchServe
from visionline.storage import ArtifactStore

log = logging.getLogger(__name__)


class DeploymentError(ServingError):
    """The candidate failed its smoke or parity check; the previous champion was restored."""


class Deployer(Protocol):
    def deploy(self, ref: ModelRef) -> InferenceClient: ...

    def endpoint(self) -> str: ...

    def stop(self) -> None: ...


class LocalTorchServeDeployer:
    """One local TorchServe; deploying swaps the model it serves."""

    def __init__(self, store: ArtifactStore, cfg: ServeConfig, workdir: str | Path) -> None:
        self.store = store
        self.cfg = cfg
        self.server = TorchServe(workdir, cfg)

    def deploy(self, ref: ModelRef) -> RestClient:
        with tempfile.TemporaryDirectory() as tmp:
            mar = fetch_mar(self.store, ref, Path(tmp))
            self.server.start(
                [
                    ServedModel(
                        ref.name,
                        f"{ref.name}.mar",
                        self.cfg.batch_size,
                        self.cfg.max_batch_delay_ms,
                        self.cfg.workers,
                    )
                ],
                {ref.name: mar},
            )
        return RestClient(
            self.server.endpoints.inference, ref.name, self.server.tokens()["inference"]
        )

    @property
    def endpoints(self) -> Endpoints:
        return self.server.endpoints

    def endpoint(self) -> str:
        return self.server.endpoints.inference

    def stop(self) -> None:
        self.server.stop()


@dataclass
class DeployResult:
    ref: ModelRef
    endpoint: str
    parity: ParityReport
    smoke: dict[str, float]


def deploy_checked(
    deployer: Deployer, store: ArtifactStore, ref: ModelRef, tol: float = 1e-4
) -> DeployResult:
    """Deploy ``ref``, smoke-test and parity-check it, then promote it to champion.

    On any failure the previous champion (if there is one) is deployed again and
    DeploymentError is raised; the registry's aliases are left untouched.
    """
    reg = Registry(store, ref.name)
    info = reg.info(ref.version)
    previous = reg.aliases().get("champion")
    try:
        client = deployer.deploy(ref)
        smoke = client.predict(store.get_bytes(info["parity_keys"][0]))
        if not smoke or not all(0.0 <= float(p) <= 1.0 for p in smoke.values()):
            raise DeploymentError(f"{ref}: smoke test answered {smoke!r}")
        report = parity_check(client, store, info, tol)
        if not report.ok:
            raise DeploymentError(f"{ref}: {report.summary()}")
    except Exception as e:
        if previous and previous != ref.version:
            log.warning(
                "deployment of %s failed (%s): restoring champion %s:%s", ref, e, ref.name, previous
            )
            deployer.deploy(ModelRef(ref.name, previous))
        else:
            deployer.stop()
        if isinstance(e, DeploymentError):
            raise
        raise DeploymentError(f"{ref} could not be deployed: {e}") from e
    reg.promote(
        ref.version,
        reason=f"deployed; parity max |dp| {report.max_abs_diff:.1e} on {report.checked} images",
    )
    return DeployResult(ref, deployer.endpoint(), report, smoke)
