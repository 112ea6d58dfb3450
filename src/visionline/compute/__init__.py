"""Where training runs: a small interface with a local subprocess backend (the embedded
default); the Kubernetes Job backend plugs into the same interface."""

from __future__ import annotations

from typing import Protocol

from visionline.config import PipelineConfig
from visionline.storage import ArtifactStore


class ComputeBackend(Protocol):
    def train(self, cfg: PipelineConfig, store: ArtifactStore, run_id: str) -> None:
        """Run ``python -m visionline.training`` for ``run_id`` to completion, or raise
        TrainingError. Re-running a run id resumes it from its last checkpoint."""


def publish_config(cfg: PipelineConfig, store: ArtifactStore) -> str:
    """Write the resolved config where any worker can read it; return its URI.
    Content-addressed, so the same config is written once."""
    key = f"configs/{cfg.fingerprint()}.yaml"
    if not store.exists(key):
        store.put_bytes(key, cfg.to_yaml().encode())
    return store.url(key)
