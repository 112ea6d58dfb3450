"""The serving pod's TorchServe container, run for real on loopback: the ConfigMap's
config.properties, the Deployment's command line and environment, and the readiness and
liveness probes the kubelet runs. Only the port numbers and the directory the pod mounts
at /var/lib/torchserve change, so tests can share a host.

The init container's step (archive into the model store, the model's lines added to the
config) is run through ``visionline.serving.fetch`` with the Deployment's own arguments
when that module exists, else emulated from its contract (README, "Operating on
Kubernetes")."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import psutil
import pytest
import requests

from tests.support.manifests import REPO, find, read_properties, render
from tests.support.s3 import free_port

pytestmark = [pytest.mark.torchserve, pytest.mark.slow]

BASE = REPO / "k8s" / "base" / "serving"
POD_ROOT = "/var/lib/torchserve"


def _probe(mode: str, config: Path) -> subprocess.CompletedProcess:
    """The kubelet's exec probe, as the Deployment declares it."""
    return subprocess.run(
        [sys.executable, "-I", "-S", str(BASE / "probe.py"), mode, str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def _base_config(root: Path) -> str:
    """The ConfigMap's config.properties with fresh loopback ports and the pod's
    /var/lib/torchserve moved under ``root``."""
    text = (BASE / "config.properties").read_text()
    ports: dict[str, int] = {}
    for port in sorted(set(re.findall(r"127\.0\.0\.1:(\d+)", text))):
        ports[port] = free_port()
        text = text.replace(f"127.0.0.1:{port}", f"127.0.0.1:{ports[port]}")
    for key in ("grpc_inference_port", "grpc_management_port"):
        old = read_properties(text)[key]
        ports[old] = free_port()
        text = re.sub(rf"^{key}={old}$", f"{key}={ports[old]}", text, flags=re.M)
    return text.replace(POD_ROOT, str(root))


def _emulate_fetch(store, ref, root: Path, base: str, settings: dict) -> str:
    """What fetch-model leaves behind: the verified archive and TorchServe's config."""
    import hashlib

    model_store = root / "model-store"
    model_store.mkdir(parents=True)
    mar = model_store / f"{ref.name}.mar"
    mar.write_bytes(store.get_bytes(ref.mar_key, verify=True))
    info = store.get_json(f"{ref.prefix}/model.json")
    assert hashlib.sha256(mar.read_bytes()).hexdigest() == info["sha256"]
    with zipfile.ZipFile(mar) as z:
        version = json.loads(z.read("MAR-INF/MANIFEST.json"))["model"]["modelVersion"]
    models = {ref.name: {version: {**settings, "defaultVersion": True, "marName": mar.name}}}
    return (
        base
        + f"model_store={model_store}\n"
        + f"load_models={ref.name}={mar.name}\n"
        + f"models={json.dumps(models)}\n"
    )


def _fetch_with_the_pod_arguments(store, ref, root: Path, base_cfg: Path) -> None:
    dep = find(render("k8s/overlays/local"), "Deployment", "visionline-torchserve")
    fetch = dep["spec"]["template"]["spec"]["initContainers"][0]
    args = [a.replace(POD_ROOT, str(root)) for a in fetch["args"]]
    args = [
        a.replace("/etc/torchserve/config.properties", str(base_cfg)).replace(
            "/etc/torchserve/", str(BASE) + "/"
        )
        for a in args
    ]
    env = {
        **os.environ,
        "VISIONLINE_STORE": store.uri,
        "VISIONLINE_MODEL": ref.name,
        "VISIONLINE_MODEL_VERSION": ref.version,
        "VISIONLINE_MODEL_SHA256": "",
    }
    proc = subprocess.run(
        [sys.executable, *fetch["command"][1:], *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group, as tini -g does in the container."""
    if proc.poll() is not None:
        return
    root = psutil.Process(proc.pid)
    tree = [root, *root.children(recursive=True)]
    os.killpg(proc.pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=60)
    for p in alive:  # a worker that ignored SIGTERM: leave nothing behind
        p.kill()
    psutil.wait_procs(alive, timeout=10)
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def pod(packaged_digits, tmp_path_factory):
    store, ref, _ = packaged_digits
    root = tmp_path_factory.mktemp("torchserve-pod")
    tmp = root / "tmp"
    tmp.mkdir()
    base = _base_config(root)
    settings = json.loads((BASE / "model-settings.json").read_text())
    config = root / "config.properties"
    if importlib.util.find_spec("visionline.serving.fetch"):
        base_cfg = root / "base.properties"
        base_cfg.write_text(base)
        _fetch_with_the_pod_arguments(store, ref, root, base_cfg)
    else:
        config.write_text(_emulate_fetch(store, ref, root, base, settings))

    dep = find(render("k8s/overlays/local"), "Deployment", "visionline-torchserve")
    container = next(
        c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "torchserve"
    )
    args = [a.replace(POD_ROOT, str(root)) for a in container["args"]]
    exe = Path(sys.executable).parent / args[0]
    env = {e["name"]: e["value"].replace(POD_ROOT, str(root)) for e in container["env"]}
    env = {**os.environ, **env, "TMPDIR": str(tmp), "TEMP": str(tmp)}
    before = _probe("ready", config)  # nothing runs yet
    assert before.returncode == 1 and before.stdout.startswith("not ready: ")

    log = (root / "stdout.log").open("wb")
    proc = subprocess.Popen(
        [str(exe if exe.exists() else shutil.which(args[0])), *args[1:]],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    props = read_properties(config.read_text())
    try:
        yield {"root": root, "config": config, "props": props, "ref": ref, "store": store}
    finally:
        _stop(proc)
        log.close()


def _wait(predicate, timeout: float = 240, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(every)
    return None


def test_readiness_means_a_ready_worker(pod):
    mgmt = pod["props"]["management_address"]
    seen_not_ready = []

    def ready():
        probe = _probe("ready", pod["config"])
        if probe.returncode != 0:
            seen_not_ready.append(probe.stdout.strip())
        return probe.returncode == 0

    assert _wait(ready, every=0.2), (pod["root"] / "stdout.log").read_text()[-3000:]
    assert seen_not_ready and all(s.startswith("not ready: ") for s in seen_not_ready)
    # What the probe saw is what TorchServe says.
    described = requests.get(f"{mgmt}/models/{pod['ref'].name}", timeout=10).json()
    assert any(w["status"] == "READY" for v in described for w in v["workers"])
    assert _probe("live", pod["config"]).returncode == 0


def test_probe_refuses_a_model_without_a_ready_worker(pod):
    """TorchServe's /ping answers before a model's worker is up; the probe must not. A
    model scaled to no workers is exactly that state, and stays in it."""
    assert _wait(lambda: _probe("ready", pod["config"]).returncode == 0)
    mgmt = pod["props"]["management_address"]
    name = pod["ref"].name
    scaled = requests.put(
        f"{mgmt}/models/{name}", params={"min_worker": 0, "max_worker": 0, "synchronous": "true"}
    )
    assert scaled.status_code == 200, scaled.text
    try:
        probe = _probe("ready", pod["config"])
        assert probe.returncode == 1
        assert f"model {name}: no READY worker" in probe.stdout
        ping = requests.get(f"{pod['props']['inference_address']}/ping", timeout=10)
        assert ping.status_code == 200  # the very gap the probe closes
        assert _probe("live", pod["config"]).returncode == 0
    finally:
        requests.put(
            f"{mgmt}/models/{name}",
            params={"min_worker": 1, "max_worker": 1, "synchronous": "true"},
            timeout=300,
        )
    assert _wait(lambda: _probe("ready", pod["config"]).returncode == 0)


def test_locked_down_and_serving(pod):
    props = pod["props"]
    # Model control stays off: the archive the init container verified is all it serves.
    refused = requests.post(
        f"{props['management_address']}/models", params={"url": "x.mar"}, timeout=10
    )
    assert refused.status_code in (400, 403, 405), refused.text
    # Behind the auth front, TorchServe itself takes no token.
    image = pod["store"].get_bytes(
        pod["store"].get_json(f"{pod['ref'].prefix}/model.json")["parity_keys"][0]
    )
    answer = requests.post(
        f"{props['inference_address']}/predictions/{pod['ref'].name}", data=image, timeout=60
    )
    assert answer.status_code == 200, answer.text
    assert len(answer.json()) == 3  # top_k
    # The scraper's endpoint (through nginx's 8082) serves Prometheus text.
    metrics = requests.get(f"{props['metrics_address']}/metrics", timeout=10)
    assert metrics.status_code == 200 and "# TYPE" in metrics.text
