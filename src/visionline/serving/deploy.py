"""Deployment behind one interface: put a registered model in service, check it, and
promote it, or put back what was served before.

``visionline.backends.deployer`` picks the implementation from ``deploy.target``: a local
TorchServe (``serving.local.LocalDeployer``) or a Kubernetes rollout
(``serving.kubernetes.KubernetesDeployer``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from visionline.errors import ServingError
from visionline.registry import ModelRef, Registry, RegistryError
from visionline.serving.client import InferenceClient
from visionline.serving.parity import ParityReport, parity_check
from visionline.storage import ArtifactStore

log = logging.getLogger(__name__)


class DeploymentError(ServingError):
    """The candidate failed its smoke or parity check; what was served before is back."""


@dataclass(frozen=True)
class DeploymentStatus:
    model: ModelRef | None  # what is in service (None: nothing)
    endpoint: str
    ready: bool  # every replica/worker of the model is ready
    detail: str


class Deployer(Protocol):
    def deploy(self, ref: ModelRef) -> InferenceClient:
        """Put ``ref`` in service (no checks) and return a client for it."""

    def rollback(self) -> ModelRef | None:
        """Serve again what was served before the last deploy; None if nothing was."""

    def status(self) -> DeploymentStatus: ...

    def endpoint(self) -> str: ...

    def token(self) -> str:
        """The inference credential a client sends (Authorization: Bearer)."""

    def stop(self) -> None: ...


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

    On any failure what was served before is put back (``Deployer.rollback``) and
    DeploymentError is raised; the registry's aliases are left untouched.
    """
    reg = Registry(store, ref.name)
    info = reg.info(ref.version)
    try:
        client = deployer.deploy(ref)
        smoke = client.predict(store.get_bytes(info["parity_keys"][0]))
        if not smoke or not all(0.0 <= float(p) <= 1.0 for p in smoke.values()):
            raise DeploymentError(f"{ref}: smoke test answered {smoke!r}")
        report = parity_check(client, store, info, tol)
        if not report.ok:
            raise DeploymentError(f"{ref}: {report.summary()}")
    except Exception as e:
        restored = deployer.rollback()
        log.warning("deployment of %s failed (%s): now serving %s", ref, e, restored or "nothing")
        if isinstance(e, DeploymentError):
            raise
        raise DeploymentError(f"{ref} could not be deployed: {e}") from e
    reason = f"deployed; parity max |dp| {report.max_abs_diff:.1e} on {report.checked} images"
    log.info(
        "%s at %s: smoke test answered %d classes; %s", ref, deployer.endpoint(), len(smoke), reason
    )
    reg.promote(ref.version, reason=reason)
    return DeployResult(ref, deployer.endpoint(), report, smoke)


def rollback_champion(
    deployer: Deployer, store: ArtifactStore, name: str, reason: str = ""
) -> DeployResult:
    """Put the previous champion back in service and make it the champion again."""
    reg = Registry(store, name)
    previous = reg.aliases().get("previous")
    if previous is None:
        raise RegistryError(f"model {name} has no previous champion to roll back to")
    ref = ModelRef(name, previous)
    client = deployer.deploy(ref)
    info = reg.info(ref.version)
    smoke = client.predict(store.get_bytes(info["parity_keys"][0]))
    report = parity_check(client, store, info)
    if not report.ok:
        raise DeploymentError(f"rollback to {ref}: {report.summary()}")
    reg.rollback(reason or "rollback")
    return DeployResult(ref, deployer.endpoint(), report, smoke)
