"""The pod's serving front on this machine: a real nginx (Debian's) with the config
``render_nginx_conf`` generates, and a credential directory laid out as the kubelet lays
out a mounted Secret (timestamped directory, ``..data`` symlink, one symlink per key),
updated with the kubelet's atomic swap."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import requests

from visionline.serving.nginx import Backend, nginx_binary, render_nginx_conf


def write_secret_volume(root: Path, data: dict[str, str]) -> None:
    """Make ``root`` show exactly ``data`` (key -> value), as the kubelet updates a Secret
    volume: write a new timestamped directory, repoint ``..data`` with one rename, then
    add and remove the per-key symlinks."""
    root.mkdir(parents=True, exist_ok=True)
    stamp = root / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{uuid.uuid4().hex[:6]}"
    stamp.mkdir()
    for key, value in data.items():
        (stamp / key).write_text(value)
    tmp_link = root / "..data_tmp"
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(stamp.name)
    old = os.readlink(root / "..data") if (root / "..data").is_symlink() else None
    os.replace(tmp_link, root / "..data")
    for key in data:
        link = root / key
        if not link.is_symlink():
            link.symlink_to(f"..data/{key}")
    for entry in root.iterdir():
        if not entry.name.startswith("..") and entry.name not in data:
            entry.unlink()
    if old:
        shutil.rmtree(root / old, ignore_errors=True)


class NginxFront:
    """One nginx process in front of one TorchServe."""

    def __init__(
        self,
        workdir: Path,
        credentials: Path,
        backend: Backend,
        rest_port: int,
        grpc_port: int,
        metrics_port: int,
    ) -> None:
        self.workdir = workdir
        self.rest = f"http://127.0.0.1:{rest_port}"
        self.grpc = f"127.0.0.1:{grpc_port}"
        self.metrics = f"http://127.0.0.1:{metrics_port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "nginx.conf"
        text = render_nginx_conf(
            credentials_dir=credentials,
            backend=backend,
            rest_port=rest_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            listen_host="127.0.0.1",
            tmp_dir=workdir / "tmp",
            # as root here, nginx would hand its workers to "nobody", who cannot read the
            # pytest temp dir; in the pod nginx runs unprivileged and never switches user
            run_as="root" if os.geteuid() == 0 else None,
        )
        self.conf.write_text(text)
        (workdir / "tmp").mkdir(exist_ok=True)
        self.proc: subprocess.Popen | None = None

    def check(self) -> subprocess.CompletedProcess:
        return subprocess.run(
            [nginx_binary(), "-t", "-e", "stderr", "-c", str(self.conf)],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def start(self, timeout: float = 30) -> None:
        log = (self.workdir / "nginx.log").open("wb")
        self.proc = subprocess.Popen(
            [nginx_binary(), "-e", "stderr", "-c", str(self.conf), "-g", "daemon off;"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {(self.workdir / 'nginx.log').read_text()}")
            try:
                requests.get(f"{self.rest}/healthz", timeout=1)
                return
            except requests.RequestException:
                time.sleep(0.1)
        raise RuntimeError("nginx did not start listening")

    def pids(self) -> set[int]:
        import psutil

        assert self.proc is not None
        root = psutil.Process(self.proc.pid)
        return {root.pid, *(c.pid for c in root.children(recursive=True))}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finish in-flight requests
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
