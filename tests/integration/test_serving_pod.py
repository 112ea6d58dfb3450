"""The serving pod of k8s/, run for real on loopback as the kubelet would run it: the
Deployment's init container, TorchServe and the nginx auth front with their commands,
environment and the ConfigMap's files, the exec probes, and the credential Secret laid
out as the kubelet mounts one. Only the pod's mount points and port numbers move, so
tests can share a host."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from tests.support.manifests import find, render
from tests.support.s3 import free_port

pytest.importorskip("visionline.serving.fetch", reason="the serving pod's entry points")
pytest.importorskip("visionline.serving.probe", reason="the serving pod's entry points")
pytestmark = [pytest.mark.torchserve, pytest.mark.slow]

MOUNTS = ("/etc/visionline/credentials", "/etc/visionline/serve", "/tmp/nginx", "/work", "/tmp")


class SecretVolume:
    """A directory laid out as the kubelet mounts a Secret: the data in a timestamped
    directory, ``..data`` pointing at it, one symlink per key; an update swaps ``..data``
    atomically, which is how nginx sees a rotation without a restart."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True)
        self.generation = 0

    def write(self, data: dict[str, str]) -> None:
        self.generation += 1
        new = self.root / f"..2026_11_30_00_00_00.{self.generation}"
        new.mkdir()
        for key, value in data.items():
            (new / key).write_text(value)
        old = (self.root / "..data").resolve() if (self.root / "..data").exists() else None
        (self.root / "..data_tmp").symlink_to(new.name)
        (self.root / "..data_tmp").rename(self.root / "..data")
        for entry in self.root.iterdir():
            if not entry.name.startswith("..") and entry.name not in data:
                entry.unlink()
        for key in data:
            if not (self.root / key).is_symlink():
                (self.root / key).symlink_to(f"..data/{key}")
        if old is not None:
            shutil.rmtree(old)


class Pod:
    """Maps the pod's paths and ports onto this host."""

    def __init__(self, root: Path) -> None:
        self.paths = {m: root / m.strip("/").replace("/", "-") for m in MOUNTS}
        for p in self.paths.values():
            p.mkdir(parents=True, exist_ok=True)
        self.ports: dict[str, str] = {}

    def port(self, pod_port: int | str) -> str:
        return self.ports.setdefault(str(pod_port), str(free_port()))

    def ports_in(self, s: str) -> str:
        s = re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{self.port(m[1])}", s)
        # TorchServe's gRPC listeners are written as separate keys.
        return re.sub(
            r"^(grpc_\w+_port)=(\d+)$", lambda m: f"{m[1]}={self.port(m[2])}", s, flags=re.M
        )

    def text(self, s: str) -> str:
        """Pod paths and loopback ports of ``s`` moved, in one pass (a moved path lies
        under /tmp itself, so it must never be moved twice)."""
        mounts = sorted(self.paths, key=len, reverse=True)
        pattern = "|".join(re.escape(m) for m in mounts)
        s = re.sub(
            rf"(?<![\w/.-])({pattern})(?=/|$|[^\w.-])",
            lambda m: str(self.paths[m[1]]),
            s,
            flags=re.M,
        )
        return self.ports_in(s)

    def argv(self, argv: list[str]) -> list[str]:
        return [self.text(a) for a in argv]

    def env(self, container: dict) -> dict[str, str]:
        plain = {e["name"]: self.text(e["value"]) for e in container["env"] if "value" in e}
        return {**os.environ, **plain}


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, **kw)


def _python(argv: list[str]) -> list[str]:
    return [sys.executable, *argv[1:]] if argv[0] == "python" else argv


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group, as tini -g does in the container."""
    if proc.poll() is not None:
        return
    root = psutil.Process(proc.pid)
    tree = [root, *root.children(recursive=True)]
    os.killpg(proc.pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=60)
    for p in alive:
        p.kill()
    psutil.wait_procs(alive, timeout=10)
    proc.wait(timeout=10)


def _wait(predicate, timeout: float = 300, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(every)
    return None


@pytest.fixture(scope="module")
def pod(packaged_digits, tmp_path_factory):
    store, ref, _ = packaged_digits
    root = tmp_path_factory.mktemp("serving-pod")
    objects = render("k8s/overlays/local")
    spec = find(objects, "Deployment", "visionline-torchserve")["spec"]["template"]["spec"]
    config = find(objects, "ConfigMap", "visionline-torchserve-serve")["data"]
    p = Pod(root)
    # The ConfigMap's files where the pod mounts them.
    for name, text in config.items():
        (p.paths["/etc/visionline/serve"] / name).write_text(text)
    secret = SecretVolume(p.paths["/etc/visionline/credentials"] / "mount")
    p.paths["/etc/visionline/credentials"] = secret.root
    token = "vl-" + os.urandom(16).hex()
    secret.write({token: "created by the test"})

    # 1. The init container, with the Deployment's command (the deployer's pinned model).
    fetch = spec["initContainers"][0]
    argv = p.argv(fetch["command"])
    argv[argv.index("--store") + 1] = store.uri
    argv[argv.index("--model") + 1] = str(ref)
    done = _run(_python(argv), env=p.env(fetch))
    assert done.returncode == 0, done.stdout + done.stderr
    ts_config = Path(argv[argv.index("--ts-config") + 1])
    ts_config.write_text(p.ports_in(ts_config.read_text()))  # its loopback ports, moved too

    # 2. TorchServe, as the container runs it (under tini -g: a process group).
    torchserve = next(c for c in spec["containers"] if c["name"] == "torchserve")
    args = p.argv(torchserve["args"])
    exe = Path(sys.executable).parent / args[0]
    log = (root / "torchserve.log").open("wb")
    server = subprocess.Popen(
        [str(exe) if exe.exists() else args[0], *args[1:]],
        env=p.env(torchserve),
        cwd=p.paths["/work"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    # 3. The auth front: nginx with the ConfigMap's nginx.conf. As root here, nginx would
    # hand its workers to nobody, who cannot read pytest's private temp dirs; in the pod it
    # runs as uid 10001 and never switches user.
    front = next(c for c in spec["containers"] if c["name"] == "auth-proxy")
    nginx_conf = p.paths["/etc/visionline/serve"] / "nginx.conf"
    public = nginx_conf.read_text().replace("listen 0.0.0.0:", "listen 127.0.0.1:")
    nginx_conf.write_text(p.text(public))
    front_argv = p.argv(front["command"])
    front_argv[front_argv.index("-c") + 1] = str(nginx_conf)
    front_argv[-1] += " user root;"
    front_log = (root / "nginx.log").open("wb")
    nginx = subprocess.Popen(
        front_argv, stdout=front_log, stderr=subprocess.STDOUT, start_new_session=True
    )
    probes = {
        name: _python(p.argv(torchserve[name]["exec"]["command"]))
        for name in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    try:
        yield {
            "ref": ref,
            "store": store,
            "token": token,
            "secret": secret,
            "nginx": nginx,
            "probes": probes,
            "log": root / "torchserve.log",
            "management": f"http://127.0.0.1:{p.ports[_probe_port(torchserve)]}",
            "rest": f"http://127.0.0.1:{p.ports['8080']}",
            "grpc": f"127.0.0.1:{p.ports['7070']}",
            "metrics": f"http://127.0.0.1:{p.ports['8082']}/metrics",
            "health": f"http://127.0.0.1:{p.ports['8080']}/healthz",
        }
    finally:
        _stop(nginx)
        _stop(server)
        log.close()
        front_log.close()


def _probe_port(torchserve: dict) -> str:
    command = torchserve["readinessProbe"]["exec"]["command"]
    return command[command.index("--management") + 1].rsplit(":", 1)[1]


def _probe(pod, name: str) -> subprocess.CompletedProcess:
    return _run(pod["probes"][name])


def _image(pod) -> bytes:
    info = pod["store"].get_json(f"{pod['ref'].prefix}/model.json")
    return pod["store"].get_bytes(info["parity_keys"][0])


def test_readiness_means_a_ready_worker(pod):
    seen = []

    def ready() -> bool:
        probe = _probe(pod, "readinessProbe")
        if probe.returncode != 0:
            seen.append(probe.stdout + probe.stderr)
        return probe.returncode == 0

    assert _wait(ready), pod["log"].read_text()[-3000:]
    assert seen, "the probe never saw the model loading"
    assert _probe(pod, "startupProbe").returncode == 0
    assert _probe(pod, "livenessProbe").returncode == 0


def test_probe_refuses_a_model_without_a_ready_worker(pod):
    """TorchServe's /ping answers while a model has no worker up; readiness must not."""
    assert _wait(lambda: _probe(pod, "readinessProbe").returncode == 0)
    name = pod["ref"].name
    url = f"{pod['management']}/models/{name}"
    scaled = requests.put(url, params={"min_worker": 0, "max_worker": 0, "synchronous": "true"})
    assert scaled.status_code == 200, scaled.text
    try:
        assert _probe(pod, "readinessProbe").returncode == 1
        assert _probe(pod, "livenessProbe").returncode == 0
    finally:
        requests.put(url, params={"min_worker": 1, "max_worker": 1, "synchronous": "true"})
    assert _wait(lambda: _probe(pod, "readinessProbe").returncode == 0)


def test_auth_front_refuses_without_the_credential_and_serves_with_it(pod):
    from visionline.serving.client import GrpcClient, PredictionError, RestClient

    assert _wait(lambda: _probe(pod, "readinessProbe").returncode == 0)
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
    # The scraper's route reaches TorchServe's metrics listener, in Prometheus' format,
    # counting the prediction above (metrics_mode=prometheus in the init container's config)
    metrics = requests.get(pod["metrics"], timeout=10)
    assert metrics.status_code == 200, metrics.text
    assert "# TYPE ts_inference_requests_total counter" in metrics.text, metrics.text[:500]
    assert f'model_name="{name}"' in metrics.text, metrics.text[:500]


def test_rotating_the_credential_needs_no_restart(pod):
    from visionline.serving.client import PredictionError, RestClient

    image, name, old = _image(pod), pod["ref"].name, pod["token"]
    new = "vl-" + os.urandom(16).hex()
    pid = pod["nginx"].pid
    pod["secret"].write({old: "old", new: "new"})  # both accepted while clients move
    assert RestClient(pod["rest"], name, new).predict(image)
    assert RestClient(pod["rest"], name, old).predict(image)
    pod["secret"].write({new: "new"})  # the old one retired
    with pytest.raises(PredictionError) as refused:
        RestClient(pod["rest"], name, old).predict(image)
    assert refused.value.status == 401
    assert RestClient(pod["rest"], name, new).predict(image)
    assert pod["nginx"].poll() is None and pod["nginx"].pid == pid
    pod["token"] = new
