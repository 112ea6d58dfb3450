"""Free loopback ports for a TorchServe instance's five listeners."""

from __future__ import annotations

from tests.support.s3 import free_port

SERVE_PORTS = (
    "inference_port",
    "management_port",
    "metrics_port",
    "grpc_inference_port",
    "grpc_management_port",
)


def serve_ports(prefix: str = "serve.") -> dict[str, int]:
    """``{"serve.inference_port": 40123, ...}``: ready for config overrides."""
    return {f"{prefix}{name}": free_port() for name in SERVE_PORTS}
