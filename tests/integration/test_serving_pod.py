"""The serving pod, run for real on loopback: TorchServe with the ConfigMap's
config.properties and the Deployment's command line and environment, the readiness and
liveness probes the kubelet runs, and the nginx auth front with the ConfigMap's nginx.conf
in front of it, its token directory laid out as the kubelet mounts a Secret. Only port
numbers and the pod's mount points change, so tests can share a host.

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


class SecretVolume:
    """A directory laid out as the kubelet mounts a Secret: the data in a timestamped
    directory, ``..data`` pointing at it, one symlink per key; an update swaps ``..data``
    atomically (AtomicWriter), which is what lets nginx see a rotation without a restart."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir()
        self.generation = 0

    def write(self, data: dict[str, str]) -> None:
        self.generation += 1
        new = self.root / f"..2026_11_30_00_00_00.{self.generation}"
        new.mkdir()
        for key, value in data.items():
            (new / key).write_text(value)
        old = (self.root / "..data").resolve() if (self.root / "..data").exists() else None
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(new.name)
        tmp.rename(self.root / "..data")
        for entry in self.root.iterdir():
            if not entry.name.startswith("..") and entry.name not in data:
                entry.unlink()
        for key in data:
            link = self.root / key
            if not link.is_symlink():
                link.symlink_to(f"..data/{key}")
        if old is not None:
            shutil.rmtree(old)


def _nginx_config(root: Path, upstream: dict[str, str], ports: dict[int, int]) -> Path:
    """The ConfigMap's nginx.conf with the pod's paths and ports moved for this host."""
    text = (BASE / "nginx.conf").read_text()
    for pod_port, port in ports.items():
        text = re.sub(rf"listen {pod_port}\b", f"listen {port}", text)
    for pod_addr, addr in upstream.items():
        text = text.replace(pod_addr, addr)
    # /tmp/ first: the test's own directories live under /tmp too.
    text = text.replace("/tmp/", f"{root}/tmp/").replace("/etc/visionline/auth/", f"{root}/auth/")
    path = root / "nginx.conf"
    path.write_text(text)
    return path


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

    # The auth front: the same nginx the server image installs, run as the pod runs it.
    # As root here, nginx would drop its workers to nobody, who cannot read pytest's
    # private temp dirs; in the pod it runs as uid 10001 and ignores `user`.
    front_root = root / "front"
    (front_root / "tmp").mkdir(parents=True)
    secret = SecretVolume(front_root / "auth")
    token = "vl-" + os.urandom(16).hex()
    secret.write({token: "created by the test"})
    front_ports = {p: free_port() for p in (8080, 7070, 8082, 8079)}
    base_props = read_properties((BASE / "config.properties").read_text())
    upstream = {
        base_props["inference_address"].removeprefix("http://"): props[
            "inference_address"
        ].removeprefix("http://"),
        f"127.0.0.1:{base_props['grpc_inference_port']}": f"127.0.0.1:{props['grpc_inference_port']}",
        base_props["metrics_address"].removeprefix("http://"): props[
            "metrics_address"
        ].removeprefix("http://"),
    }
    nginx_conf = _nginx_config(front_root, upstream, front_ports)
    front_cmd = next(
        c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "auth-front"
    )["command"]
    front_cmd = [str(nginx_conf) if a.endswith("nginx.conf") else a for a in front_cmd]
    front_cmd[-1] = front_cmd[-1] + " user root;"
    front_log = (front_root / "stdout.log").open("wb")
    front = subprocess.Popen(
        front_cmd, stdout=front_log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        yield {
            "root": root,
            "config": config,
            "props": props,
            "ref": ref,
            "store": store,
            "secret": secret,
            "token": token,
            "front": front,
            "rest": f"http://127.0.0.1:{front_ports[8080]}",
            "grpc": f"127.0.0.1:{front_ports[7070]}",
            "metrics": f"http://127.0.0.1:{front_ports[8082]}/metrics",
            "health": f"http://127.0.0.1:{front_ports[8079]}/healthz",
        }
    finally:
        _stop(front)
        front_log.close()
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


def _image(pod) -> bytes:
    info = pod["store"].get_json(f"{pod['ref'].prefix}/model.json")
    return pod["store"].get_bytes(info["parity_keys"][0])


def test_auth_front_refuses_without_the_credential_and_serves_with_it(pod):
    from visionline.serving.client import GrpcClient, PredictionError, RestClient

    assert _wait(lambda: _probe("ready", pod["config"]).returncode == 0)
    image, name = _image(pod), pod["ref"].name
    url = f"{pod['rest']}/predictions/{name}"
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token-0123456789"},
        {"Authorization": f"Basic {pod['token']}"},
        {"Authorization": "Bearer ../../../../etc/hostname"},
        {"Authorization": "Bearer ..data"},
    ):
        refused = requests.post(url, data=image, headers=headers, timeout=30)
        assert refused.status_code == 401, (headers, refused.text)
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    # TorchServe's own /ping too: nothing passes the front without the token.
    assert requests.get(f"{pod['rest']}/ping", timeout=10).status_code == 401

    answer = RestClient(pod["rest"], name, pod["token"]).predict(image)
    assert len(answer) == 3

    with pytest.raises(PredictionError, match="UNAUTHENTICATED"):
        GrpcClient(pod["grpc"], name, "wrong-token-0123456789").predict(image)
    grpc_client = GrpcClient(pod["grpc"], name, pod["token"])
    try:
        assert grpc_client.predict(image) == answer
    finally:
        grpc_client.close()

    # The kubelet's probe of nginx and the scraper's port need no token.
    assert requests.get(pod["health"], timeout=10).status_code == 200
    metrics = requests.get(pod["metrics"], timeout=10)
    assert metrics.status_code == 200 and "# TYPE" in metrics.text


def test_rotating_the_credential_needs_no_restart(pod):
    from visionline.serving.client import PredictionError, RestClient

    image, name, old = _image(pod), pod["ref"].name, pod["token"]
    new = "vl-" + os.urandom(16).hex()
    pid = pod["front"].pid
    pod["secret"].write({old: "old", new: "new"})  # step 1: both accepted
    assert RestClient(pod["rest"], name, new).predict(image)
    assert RestClient(pod["rest"], name, old).predict(image)
    pod["secret"].write({new: "new"})  # step 2: the old one retired
    with pytest.raises(PredictionError) as refused:
        RestClient(pod["rest"], name, old).predict(image)
    assert refused.value.status == 401
    assert RestClient(pod["rest"], name, new).predict(image)
    assert pod["front"].poll() is None and pod["front"].pid == pid
    pod["token"] = new


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
    # TorchServe's own metrics listener, which nginx's 8082 forwards to the scraper.
    metrics = requests.get(f"{props['metrics_address']}/metrics", timeout=10)
    assert metrics.status_code == 200 and "# TYPE" in metrics.text
