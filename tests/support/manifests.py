"""The repository's Kubernetes manifests as an operator gets them: rendered by
``kubectl kustomize`` and checked by the same command-line tools docs/kubernetes.md names."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
OVERLAYS = ("k8s/overlays/local", "k8s/overlays/gpu")
# Everything that renders: the overlays, and the reference training Jobs.
KUSTOMIZATIONS = (*OVERLAYS, "k8s/training")
TOOLS_BIN = REPO / ".tools-venv" / "bin"
KUBERNETES_VERSION = "1.31.0"
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


def tool_env() -> dict[str, str]:
    """PATH as after `make tools`: this venv's scripts (kubernetes-validate) first, the
    system's next, then the tools venv, whose kubectl serves machines without one."""
    parts = [str(Path(sys.executable).parent), os.environ.get("PATH", ""), str(TOOLS_BIN)]
    return {**os.environ, "PATH": os.pathsep.join(p for p in parts if p)}


def which(tool: str) -> str | None:
    return shutil.which(tool, path=tool_env()["PATH"])


def sh(command: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """A command line run by bash from the repository root, as a user types it."""
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        cwd=REPO,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def render(kustomization: str) -> list[dict[str, Any]]:
    proc = sh(f"kubectl kustomize {kustomization}")
    assert proc.returncode == 0, f"kubectl kustomize {kustomization}:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def render_with(overlay: str, components: tuple[str, ...]) -> list[dict[str, Any]]:
    """``overlay`` rendered with optional ``components`` (``k8s/components/<name>``) added,
    as an operator adds them to the overlay's kustomization.yaml."""
    with tempfile.TemporaryDirectory() as tmp:
        # kustomize takes no absolute paths: the directories relative to the temporary one
        up = os.path.relpath(REPO, tmp)
        (Path(tmp) / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "resources": [f"{up}/{overlay}"],
                    "components": [f"{up}/k8s/components/{c}" for c in components],
                }
            )
        )
        return render(tmp)


def find(objects: list[dict], kind: str, name: str) -> dict:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_spec(obj: dict) -> dict | None:
    if obj["kind"] in POD_KINDS:
        return obj["spec"]["template"]["spec"]
    return None


def containers(spec: dict) -> Iterator[dict]:
    yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


def read_properties(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out
