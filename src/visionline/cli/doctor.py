"""``visionline doctor``: check what a user needs and say what to fix."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from importlib import metadata

import requests
import torch

from visionline.cli.common import Command, pipeline_config
from visionline.config import PipelineConfig
from visionline.kube import KubernetesApiError, KubernetesContextError, cluster_version
from visionline.serving.nginx import nginx_binary
from visionline.storage import open_store

TORCH_PIN = "2.14.1"
TORCHSERVE_PIN = "0.12.0"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True

    def line(self) -> str:
        mark = "ok  " if self.ok else ("FAIL" if self.required else "warn")
        return f"[{mark}] {self.name}: {self.detail}"


def check_torch() -> list[Check]:
    out = [
        Check(
            "torch",
            torch.__version__.split("+")[0] == TORCH_PIN,
            f"{torch.__version__}"
            + (
                ""
                if torch.__version__.startswith(TORCH_PIN)
                else f" (pinned {TORCH_PIN}: make install)"
            ),
        )
    ]
    if torch.cuda.is_available():
        out.append(
            Check("cuda", True, f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")
        )
    else:
        out.append(Check("cuda", False, "no GPU visible: training runs on CPU", required=False))
    return out


def check_java() -> Check:
    java = shutil.which("java")
    if not java:
        return Check(
            "java",
            False,
            "not found: TorchServe needs Java 17 (apt-get install openjdk-17-jre-headless)",
        )
    proc = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    text = proc.stderr + proc.stdout
    m = re.search(r'version "(\d+)', text)
    major = int(m.group(1)) if m else 0
    return Check(
        "java",
        major >= 17,
        f"Java {major} at {java}" + ("" if major >= 17 else ": TorchServe 0.12 needs Java 17+"),
    )


def check_store(uri: str) -> Check:
    key = f"tmp/doctor-{uuid.uuid4().hex}"
    try:
        store = open_store(uri)
        store.put_bytes(key, b"ok")
        ok = store.get_bytes(key, verify=True) == b"ok"
        store.delete(key)
        return Check("store", ok, f"{store.uri} is reachable and writable")
    except Exception as e:
        return Check("store", False, f"{uri}: {e}")


def check_prefect() -> Check:
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return Check(
            "prefect",
            True,
            "no PREFECT_API_URL: flows use a temporary local server",
            required=False,
        )
    try:
        r = requests.get(url.rstrip("/") + "/health", timeout=5)
        return Check("prefect", r.ok, f"{url} answered {r.status_code}")
    except Exception as e:
        return Check("prefect", False, f"{url} unreachable: {e} (start one with make ui)")


def check_torchserve() -> Check:
    """TorchServe and its archiver, at the pinned version, next to this Python."""
    try:
        ts, archiver = metadata.version("torchserve"), metadata.version("torch-model-archiver")
    except metadata.PackageNotFoundError as e:
        return Check("torchserve", False, f"{e.name} is not installed: make install")
    exe = shutil.which("torchserve") or os.path.join(os.path.dirname(sys.executable), "torchserve")
    if not os.path.exists(exe):
        return Check("torchserve", False, "the torchserve command is not on PATH: make install")
    pinned = ts == TORCHSERVE_PIN and archiver == TORCHSERVE_PIN
    return Check(
        "torchserve",
        pinned,
        f"torchserve {ts}, torch-model-archiver {archiver}"
        + ("" if pinned else f" (pinned {TORCHSERVE_PIN}: make install)"),
    )


def check_nginx(mode: str = "auto") -> Check:
    """nginx for the local serving front (``serve.local_front``): required only when the
    config asks for it; without it REST is served by TorchServe directly."""
    exe = nginx_binary()
    if mode == "none":
        return Check("nginx", True, "serve.local_front is none: REST from TorchServe directly")
    if exe is None:
        return Check(
            "nginx",
            False,
            "not installed: REST is served by TorchServe directly and a body sent without a "
            "content type (curl --data-binary) gets a 415; apt-get install -y nginx-light",
            required=mode == "nginx",
        )
    proc = subprocess.run([exe, "-v"], capture_output=True, text=True, timeout=30)
    version = (proc.stderr or proc.stdout).strip().split("/")[-1]
    return Check("nginx", True, f"nginx {version} at {exe}: REST through the local front")


def check_kubernetes(required: bool = False, timeout: float = 5) -> Check:
    """A usable Kubernetes context: one that exists and whose API server answers.
    A problem either way; it only fails the doctor when the config uses the cluster.
    """
    try:
        where, version = cluster_version(timeout)
    except KubernetesContextError as e:
        return Check(
            "kubernetes",
            False,
            f"no usable Kubernetes context ({e}): set KUBECONFIG or "
            "run `kubectl config use-context NAME`"
            + ("" if required else "; only needed for compute.backend/deploy.target kubernetes"),
            required=required,
        )
    except KubernetesApiError as e:
        return Check(
            "kubernetes",
            False,
            f"{e}: check the cluster, VPN or `kubectl cluster-info`",
            required=required,
        )
    return Check("kubernetes", True, f"{where}: API server {version}", required)


def run_doctor(cfg: PipelineConfig | None, store_uri: str) -> list[Check]:
    cluster = cfg is not None and (
        cfg.compute.backend == "kubernetes" or cfg.deploy.target == "kubernetes"
    )
    return [
        *check_torch(),
        check_java(),
        check_torchserve(),
        check_nginx(cfg.serve.local_front if cfg is not None else "auto"),
        check_store(store_uri),
        check_prefect(),
        check_kubernetes(required=cluster),
    ]


def doctor_arguments(p: argparse.ArgumentParser) -> None:
    """No arguments of its own: it checks what the global --config and --store name."""


def cmd_doctor(args: argparse.Namespace) -> int:
    cfg = pipeline_config(args)
    checks = run_doctor(cfg, cfg.store)
    for c in checks:
        print(c.line())
    return 0 if all(c.ok or not c.required for c in checks) else 1


COMMANDS = {"doctor": Command(doctor_arguments, cmd_doctor)}
