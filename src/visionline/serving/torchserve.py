"""TorchServe 0.12 behind a small interface: a generated, locked-down config and a process.

Security defaults (TorchServe is in limited maintenance upstream, so we do not lean on
its defaults): token authorization on, the model (register/delete) API off, management
and metrics bound to loopback only, ``allowed_urls`` restricted to our model store, no
per-model pip installs, environment-variable overrides off.

Each server gets its own working directory (config, model store, logs, the token file
``key_file.json`` that TorchServe writes to its cwd) and its own temp dir, which holds
the pid file and the workers' sockets: two servers on one host do not collide.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import requests

import visionline
from visionline.config import ServeConfig
from visionline.errors import ServingError

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class ServedModel:
    name: str
    mar: str  # file name inside the model store
    batch_size: int = 1
    max_batch_delay_ms: int = 20
    workers: int = 1
    response_timeout_s: int = 120
    # the archive's own version (MAR-INF/MANIFEST.json): TorchServe applies the per-model
    # settings above only under the version the archive declares. start() fills it in.
    version: str = ""


def mar_version(path: str | Path) -> str:
    """The model version a .mar declares in its manifest."""
    try:
        with zipfile.ZipFile(path) as z:
            manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
        return str(manifest["model"]["modelVersion"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise ServingError(f"{path}: not a model archive with a version ({e})") from e


@dataclass(frozen=True)
class Endpoints:
    inference: str
    management: str
    metrics: str
    grpc_inference: str
    grpc_management: str


def max_body_bytes(cfg: ServeConfig) -> int:
    """TorchServe's ``max_request_size`` for our ``max_request_bytes``: the largest image
    must fit as base64 JSON (4/3 of its size) with room for multipart or JSON framing.
    Anything larger is refused by TorchServe's frontend before it reaches a worker,
    with a 413 and an empty body; below this, the handler answers our own 413."""
    return -(-cfg.max_request_bytes * 4 // 3) + 64 * 1024


def _url(host: str, port: int) -> str:
    return f"http://{host}:{port}"


def render_config(
    cfg: ServeConfig,
    model_store: Path,
    models: list[ServedModel],
    inference_host: str = LOOPBACK,
    token_expiration_min: int = 24 * 60,
    token_auth: bool = True,
) -> str:
    """config.properties for TorchServe. Only inference may bind beyond loopback (in a
    pod, behind a Service); management and metrics never do.

    ``token_auth=False`` is only for TorchServe behind the authenticating front
    (``serving.nginx``) in the same pod: every listener must then be on loopback, so
    nothing reaches TorchServe without passing the front's credential check.
    """
    if not token_auth and not ipaddress.ip_address(inference_host).is_loopback:
        raise ServingError(
            f"TorchServe's token auth may be off only when it listens on loopback behind "
            f"the authenticating front, not on {inference_host}"
        )
    store = Path(model_store).resolve()
    model_cfg = {
        m.name: {
            m.version or "1.0": {
                "defaultVersion": True,
                "marName": m.mar,
                "minWorkers": m.workers,
                "maxWorkers": m.workers,
                "batchSize": m.batch_size,
                "maxBatchDelay": m.max_batch_delay_ms,
                "responseTimeout": m.response_timeout_s,
            }
        }
        for m in models
    }
    lines = {
        "inference_address": _url(inference_host, cfg.inference_port),
        "management_address": _url(LOOPBACK, cfg.management_port),
        "metrics_address": _url(LOOPBACK, cfg.metrics_port),
        "grpc_inference_address": inference_host,
        "grpc_inference_port": cfg.grpc_inference_port,
        "grpc_management_address": LOOPBACK,
        "grpc_management_port": cfg.grpc_management_port,
        "enable_grpc_ssl": "false",
        "disable_token_authorization": "false" if token_auth else "true",
        "token_expiration_min": token_expiration_min,
        "enable_model_api": "false",
        "enable_envvars_config": "false",
        "install_py_dep_per_model": "false",
        "allowed_urls": f"file://{store}/.*",
        "model_store": str(store),
        "load_models": ",".join(f"{m.name}={m.mar}" for m in models) or "",
        "models": json.dumps(model_cfg),
        "default_workers_per_model": cfg.workers,
        "max_request_size": max_body_bytes(cfg),
        "max_response_size": 6553500,
        "disable_system_metrics": "true",
        # /metrics in Prometheus' format (the default, log, leaves it empty): request
        # counts and latencies per model, for the scraper the pod's NetworkPolicy admits
        "metrics_mode": "prometheus",
        "default_response_timeout": 120,
    }
    return "".join(f"{k}={v}\n" for k, v in lines.items())


def parse_config(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#") and "=" in line:
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


def management_is_loopback_only(text: str) -> bool:
    """True when no management or metrics listener binds a non-loopback address."""
    props = parse_config(text)
    hosts = [
        urlsplit(props["management_address"]).hostname,
        urlsplit(props["metrics_address"]).hostname,
        props.get("grpc_management_address", "0.0.0.0"),
    ]
    return all(h and ipaddress.ip_address(h).is_loopback for h in hosts)


def key_file_path(workdir: str | Path) -> Path:
    """Where TorchServe writes its tokens: ``key_file.json`` in its working directory."""
    return Path(workdir) / "key_file.json"


def read_tokens(path: Path) -> dict[str, str]:
    """The tokens in a ``key_file.json``: {"inference": ..., "management": ...}."""
    keys = json.loads(path.read_text())
    return {kind: keys[kind]["key"] for kind in ("inference", "management")}


class TorchServe:
    """One TorchServe instance rooted at ``workdir``."""

    def __init__(
        self,
        workdir: str | Path,
        cfg: ServeConfig,
        inference_host: str = LOOPBACK,
        token_auth: bool = True,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.cfg = cfg
        self.inference_host = inference_host
        # False only behind the authenticating front, on loopback (see render_config)
        self.token_auth = token_auth
        self.model_store = self.workdir / "model-store"
        self.config_path = self.workdir / "config.properties"
        self.state_path = self.workdir / "state.json"

    @property
    def endpoints(self) -> Endpoints:
        host = LOOPBACK if self.inference_host in ("0.0.0.0", "::") else self.inference_host
        return Endpoints(
            inference=_url(host, self.cfg.inference_port),
            management=_url(LOOPBACK, self.cfg.management_port),
            metrics=_url(LOOPBACK, self.cfg.metrics_port),
            grpc_inference=f"{host}:{self.cfg.grpc_inference_port}",
            grpc_management=f"{LOOPBACK}:{self.cfg.grpc_management_port}",
        )

    @property
    def key_file(self) -> Path:
        return key_file_path(self.workdir)

    def _env(self) -> dict[str, str]:
        tmp = self.workdir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        # TMPDIR holds torchserve's pid file; TEMP becomes java.io.tmpdir, where the workers'
        # unix sockets live (.ts.sock.<port>): both per instance, so servers do not collide.
        env = {
            **os.environ,
            "TMPDIR": str(tmp),
            "TEMP": str(tmp),
            "LOG_LOCATION": str(self.workdir / "logs"),
            "METRICS_LOCATION": str(self.workdir / "logs"),
        }
        # The worker processes must import visionline (the handler does): put the
        # directory visionline is imported from (site-packages or a checkout's src/) first.
        src = str(Path(visionline.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
        env.pop("TS_CONFIG_FILE", None)
        return env

    def _torchserve(self) -> list[str]:
        """TorchServe's launcher under this interpreter: the Java frontend then starts its
        Python workers with the same interpreter, which imports this visionline."""
        if importlib.util.find_spec("ts.model_server") is None:
            raise ServingError("torchserve not found: pip install torchserve==0.12.0")
        return [sys.executable, "-m", "ts.model_server"]

    def start(
        self, models: list[ServedModel], mar_files: dict[str, Path], timeout: float = 180
    ) -> Endpoints:
        if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
            raise ServingError(
                "Java 17 is required by TorchServe: apt-get install openjdk-17-jre-headless"
            )
        self.stop(quiet=True)
        self.model_store.mkdir(parents=True, exist_ok=True)
        for name, path in mar_files.items():
            shutil.copy(path, self.model_store / f"{name}.mar")
        models = [
            m if m.version else replace(m, version=mar_version(self.model_store / m.mar))
            for m in models
        ]
        self.key_file.unlink(missing_ok=True)
        (self.workdir / "logs" / "model_log.log").unlink(
            missing_ok=True
        )  # a fresh count of crashes
        self.config_path.write_text(
            render_config(
                self.cfg,
                self.model_store,
                models,
                self.inference_host,
                token_auth=self.token_auth,
            )
        )
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        launcher_log = self.workdir / "logs" / "launcher.log"
        # The Java server inherits the launcher's stdout/stderr and outlives it: give it
        # a file, not a pipe, or waiting for the launcher would wait for the server.
        with launcher_log.open("ab") as out:
            proc = subprocess.run(
                [
                    *self._torchserve(),
                    "--start",
                    "--ncs",
                    "--ts-config",
                    str(self.config_path),
                    "--model-store",
                    str(self.model_store),
                ],
                cwd=self.workdir,
                env=self._env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=60,
            )
        if proc.returncode != 0:
            raise ServingError(f"torchserve failed to start: see {launcher_log}")
        self.state_path.write_text(
            json.dumps(
                {
                    "models": [asdict(m) for m in models],
                    "endpoints": asdict(self.endpoints),
                    "key_file": str(self.key_file),
                }
            )
        )
        try:
            for m in models:
                self.wait_ready(m.name, timeout)
        except ServingError:
            self.stop(quiet=True)
            raise
        return self.endpoints

    def tokens(self, timeout: float = 60) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                # TorchServe may be midway through writing the file: retry a partial read
                return read_tokens(self.key_file)
            except (OSError, ValueError, KeyError, TypeError) as e:
                if time.monotonic() > deadline:
                    raise ServingError(
                        f"TorchServe wrote no usable token file at {self.key_file} ({e})"
                    ) from e
            time.sleep(0.2)

    def workers(self, model: str) -> list[dict]:
        """The model's workers as the management API describes them (status, pid, ...)."""
        try:
            headers = (
                {"Authorization": f"Bearer {self.tokens(timeout=1)['management']}"}
                if self.token_auth
                else {}
            )
            r = requests.get(
                f"{self.endpoints.management}/models/{model}", headers=headers, timeout=5
            )
        except requests.RequestException as e:
            raise ServingError(f"TorchServe management API unreachable: {e}") from e
        if not r.ok:
            raise ServingError(f"describe {model}: {r.status_code} {r.text[:200]}")
        try:
            return list(r.json()[0].get("workers", []))
        except (ValueError, IndexError, KeyError) as e:
            raise ServingError(f"describe {model}: unexpected answer {r.text[:200]!r}") from e

    def wait_ready(self, model: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                workers = self.workers(model)
                if workers and all(w.get("status") == "READY" for w in workers):
                    return
                last = json.dumps(workers)
            except ServingError as e:
                last = str(e)
            if self._worker_failures() >= 3:
                break  # a worker that crashes at load will not recover: fail fast
            time.sleep(0.5)
        logs = self.workdir / "logs"
        raise ServingError(
            f"model {model} did not become ready in {timeout:.0f} s ({last}); see {logs}\n"
            + _tail(logs / "model_log.log")
            + _tail(logs / "ts_log.log")
        )

    def _worker_failures(self) -> int:
        log = self.workdir / "logs" / "model_log.log"
        if not log.is_file():
            return 0
        return log.read_text(errors="replace").count("Traceback (most recent call last)")

    @property
    def _pid_file(self) -> Path:
        return self.workdir / "tmp" / ".model_server.pid"

    def is_running(self) -> bool:
        # Not an HTTP probe: with token auth on, TorchServe 0.12 refuses even /ping.
        try:
            pid = int(self._pid_file.read_text().strip())
            return (
                psutil.pid_exists(pid)
                and "org.pytorch.serve.ModelServer" in psutil.Process(pid).cmdline()
            )
        except (OSError, ValueError, psutil.Error):
            return False

    def _process_tree(self) -> list:
        try:
            root = psutil.Process(int(self._pid_file.read_text().strip()))
            return [root, *root.children(recursive=True)]
        except (OSError, ValueError, psutil.Error):
            return []

    def stop(self, quiet: bool = False, timeout: float = 60) -> None:
        """Stop the server and wait until the JVM and every Python worker have exited, so
        the next server (and its CPU) starts clean."""
        if not self._pid_file.exists():
            return
        procs = self._process_tree()
        for worker in procs[1:]:  # as tini -g does in the pod: they write what they hold
            with contextlib.suppress(psutil.Error):
                worker.send_signal(signal.SIGTERM)
        proc = subprocess.run(
            [*self._torchserve(), "--stop"],
            cwd=self.workdir,
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0 and not quiet:
            raise ServingError(f"torchserve --stop failed: {proc.stdout}{proc.stderr}")
        _, alive = psutil.wait_procs(procs, timeout=timeout)
        for p in alive:  # a worker stuck in a long request: do not leave it behind
            p.kill()
        psutil.wait_procs(alive, timeout=10)


def _tail(path: Path, lines: int = 12) -> str:
    """The end of a server log, for an error that would otherwise only point at it."""
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return f"--- {path.name} (last {len(text)} lines)\n" + "\n".join(text) + "\n"
