"""The run and config the Job and JobSet manifest tests build from: the digits config
on the Kubernetes backend with an S3 store, and ``compute.kubernetes`` keys set."""

from __future__ import annotations

from pathlib import Path

from visionline.config import PipelineConfig, load_config

REPO = Path(__file__).resolve().parents[3]
RUN = "digits-cnn-0123456789ab-deadbeef"
URI = "s3://bucket/artifacts/configs/abc.yaml"
STORE = "s3://bucket/artifacts"


def kube_config(**kube: object) -> PipelineConfig:
    """configs/digits.yaml on the Kubernetes backend, ``kube`` as compute.kubernetes.*"""
    cfg = load_config(REPO / "configs" / "digits.yaml")
    return cfg.with_overrides(
        store=STORE,
        **{"compute.backend": "kubernetes"},
        **{f"compute.kubernetes.{k}": v for k, v in kube.items()},
    )
