"""The authenticating front of a served model: nginx in the pod, TorchServe behind it.

TorchServe 0.12 asks for a token even on ``/ping``, and every replica generates its own
random tokens that expire, so clients behind a Service cannot know them. Switching its
auth off and leaving the port open is the usual answer; ours is one credential for
every replica, checked by nginx in front of a TorchServe that listens on the pod's
loopback only (its own token auth off, see ``torchserve.render_config``):

- The credential Secret is mounted into nginx as a directory whose *file names* are the
  accepted bearer tokens (a Secret key per token; the value may name who holds it).
  A request passes when ``Authorization: Bearer <token>`` names a file there: the
  ``auth_request`` subrequest checks ``-f <dir>/<token>`` on every request, so there is
  no copy of the credential in nginx's memory and nothing to reload.
- Rotation without a restart: add the new token as a second key of the Secret (the
  kubelet swaps the mounted files atomically), move the clients over, delete the old
  key. Both are accepted in between.
- REST (``/predictions/``, ``/ping``) and gRPC (TorchServe's inference service, over
  HTTP/2 with ``grpc_pass``) are both checked; management is never proxied; metrics are
  proxied without a credential on their own port, which only the scraper a
  NetworkPolicy admits can reach.

A token is 16-256 characters of ``[A-Za-z0-9_-]`` (``secrets.token_urlsafe(32)``
gives 43), which is also what keeps a file lookup inside the credential directory.

The same front also serves on one machine (``serving.local``), without a credential
directory: there TorchServe keeps its own token auth and the front passes
``Authorization`` through. Either way the front fixes what TorchServe's frontend would
otherwise destroy: a body sent as ``application/x-www-form-urlencoded`` (curl's default
for ``--data-binary``, urllib's for bytes) is forwarded unparsed as
``application/octet-stream``, with the client's content type in ``X-Visionline-Sent-As``,
so the handler gets the bytes as sent (``serving.requests``); a body over the limit gets
a JSON 413 that names the limit instead of an empty one.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import psutil
import requests

from visionline.errors import ServingError
from visionline.serving.requests import FORM_URLENCODED, SENT_AS_HEADER

TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{16,256}$")
GRPC_SERVICE = "org.pytorch.serve.grpc.inference.InferenceAPIsService"


def new_token() -> str:
    """A credential in the accepted shape (also a valid Secret key)."""
    return secrets.token_urlsafe(32)


def is_token(text: str) -> bool:
    return bool(TOKEN_RE.match(text))


@dataclass(frozen=True)
class Backend:
    """Where TorchServe listens inside the pod (loopback)."""

    host: str
    inference_port: int
    grpc_port: int
    metrics_port: int


@dataclass(frozen=True)
class RolloutFront:
    """A challenger beside the champion (``serving.rollout``): ``shadow`` mirrors
    ``percent`` of the predictions to it through a relay on ``relay_port`` (the client
    gets the champion's answer only); ``canary`` sends ``percent`` to it for real. Each
    answered request is logged as a JSON line to ``log_path``, with its side."""

    mode: str  # "shadow" | "canary"
    percent: float
    challenger_host: str
    challenger_port: int
    relay_port: int
    log_path: str
    challenger_timeout_s: float = 30.0


# The configuration text lives in these files (package data; the folder name is not an
# identifier, so nothing takes it for a Python package); the renderer only fills fields.
TEMPLATES = files("visionline.serving") / "nginx-templates"
# ``{{ name }}``: nginx's own variables are ``$name`` and its blocks ``{ }``. A field alone
# on its line is a block (whole lines, or nothing: then the line goes too).
_FIELD = re.compile(r"^\{\{ (\w+) \}\}\n|\{\{ (\w+) \}\}", re.M)


def fill_template(name: str, **fields: object) -> str:
    """Template ``name`` from ``TEMPLATES`` with its fields filled (once: a value is
    never searched for fields itself). A field the template names but ``fields`` lacks
    is a KeyError."""
    text = (TEMPLATES / name).read_text()
    return _FIELD.sub(lambda m: str(fields[m.group(1) or m.group(2)]), text)


def render_nginx_conf(
    *,
    credentials_dir: str | Path | None,
    backend: Backend,
    rest_port: int,
    grpc_port: int | None,
    metrics_port: int | None,
    listen_host: str = "0.0.0.0",
    tmp_dir: str | Path = "/tmp/nginx",
    max_body_bytes: int = 14 * 1024 * 1024,
    max_image_bytes: int = 10 * 1024 * 1024,
    timeout_s: int = 120,
    health_path: str = "/healthz",
    run_as: str | None = None,
    request_id: bool = False,
    rollout: RolloutFront | None = None,
) -> str:
    """nginx.conf for the front (complete: runs as ``nginx -c FILE``, unprivileged,
    with a read-only root filesystem: every path nginx writes is under ``tmp_dir``).

    ``max_body_bytes`` is the largest body the front forwards: TorchServe's own
    ``max_request_size`` (``torchserve.max_body_bytes``), so the two agree. Without
    ``credentials_dir`` the front checks no credential and passes ``Authorization`` on to
    a TorchServe with its own token auth (one machine); without ``grpc_port`` it has no
    gRPC listener (clients reach TorchServe's gRPC port directly). ``request_id``: the
    front gives every prediction an ``X-Request-Id`` (the client's, or its own) and
    returns it; a ``rollout`` implies it.
    """
    fields: dict[str, object] = {
        "tmp": str(tmp_dir).rstrip("/"),
        "listen_host": listen_host,
        "rest_port": rest_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "backend_host": backend.host,
        "backend_inference_port": backend.inference_port,
        "backend_grpc_port": backend.grpc_port,
        "backend_metrics_port": backend.metrics_port,
        "max_body_bytes": max_body_bytes,
        "max_image_bytes": max_image_bytes,
        "timeout_s": timeout_s,
        "health_path": health_path,
        "form_urlencoded": FORM_URLENCODED,
        "sent_as_header": SENT_AS_HEADER,
        "grpc_service": GRPC_SERVICE,
        # In a pod nginx runs unprivileged and never switches user; started as root it
        # would hand its workers to a default user, who must be able to read the credentials.
        "user": f"user {run_as};\n" if run_as else "",
    }
    if credentials_dir is None:
        fields["role"] = f"the front of TorchServe\n# (on {backend.host}, checking its own tokens)."
        fields["auth"] = fields["unauthorized"] = ""
        rest_check = grpc_check = fill_template("credential-passed-on.conf")
    else:
        fields["role"] = (
            "the authenticating front\n# of TorchServe (which listens on "
            f"{backend.host} only, its own token auth off)."
        )
        # The check nginx runs on every request (an internal subrequest): a bearer token
        # of the accepted shape that names a file in the credential directory.
        fields["auth"] = fill_template(
            "auth.conf", credentials_dir=str(credentials_dir).rstrip("/")
        )
        fields["unauthorized"] = fill_template("unauthorized.conf")
        rest_check = fill_template("credential-check.conf", directive="proxy")
        grpc_check = fill_template("credential-check.conf", directive="grpc")
    fields.update(_rollout_fields(fields, rollout, request_id, credentials_dir is None))
    grpc = fill_template("grpc.conf", **fields, check=grpc_check) if grpc_port else ""
    metrics = fill_template("metrics.conf", **fields) if metrics_port else ""
    return fill_template(
        "nginx.conf", **fields, check=rest_check, grpc_server=grpc, metrics_server=metrics
    )


def _rollout_fields(
    fields: dict[str, object], rollout: RolloutFront | None, request_id: bool, local: bool
) -> dict[str, object]:
    """The request id and rollout parts of the front (all empty when neither is asked)."""
    out: dict[str, object] = dict.fromkeys(
        (
            "request_id_map",
            "request_id_header",
            "rollout_http",
            "rollout_predict",
            "rollout_access_log",
            "rollout_locations",
            "rollout_relay",
        ),
        "",
    )
    if request_id or rollout:
        out["request_id_map"] = fill_template("request-id.conf")
        out["request_id_header"] = fill_template("request-id-header.conf")
    if rollout is None:
        return out
    if rollout.mode not in ("shadow", "canary") or not 0 < rollout.percent <= 100:
        raise ServingError(
            f"rollout: mode {rollout.mode!r} (shadow or canary) with a percent in (0, 100], "
            f"got {rollout.percent}"
        )
    # Locally TorchServe checks its own tokens: the champion's /ping decides for the
    # challenger too (which listens on loopback with its token auth off). In a pod the
    # front's own credential check applies to both.
    check = (
        "            auth_request /_visionline_champion_auth;\n"
        if local
        else fill_template("credential-check.conf", directive="proxy")
    )
    ro = {
        **fields,
        "request_id_header": out["request_id_header"],
        "mode": rollout.mode,
        "percent": f"{rollout.percent:g}",
        "side": "champion",
        "relay_port": rollout.relay_port,
        "challenger_host": rollout.challenger_host,
        "challenger_port": rollout.challenger_port,
        "challenger_timeout_s": f"{rollout.challenger_timeout_s:g}",
        "rollout_log": rollout.log_path,
        "challenger_check": check,
        "relay_auth": fill_template("champion-auth.conf", **fields) if local else fields["auth"],
        # the main server has the pod's credential check already
        "main_auth": fill_template("champion-auth.conf", **fields) if local else "",
    }
    if rollout.mode == "canary":
        # the side is the draw; the relay is not started, its port only names nothing
        ro["side"] = "$visionline_draw"
    out["rollout_http"] = fill_template("rollout-http.conf", **ro)
    out["rollout_predict"] = fill_template(f"rollout-{rollout.mode}.conf")
    out["rollout_access_log"] = (
        f"            access_log /dev/stdout visionline;\n"
        f"            access_log {rollout.log_path} visionline_rollout;\n"
    )
    out["rollout_locations"] = fill_template("rollout-server.conf", **ro)
    if rollout.mode == "shadow":
        out["rollout_relay"] = fill_template("rollout-relay.conf", **ro)
    return out


def nginx_binary() -> str | None:
    """The nginx executable (Debian installs it in /usr/sbin, often not on a user's PATH)."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None
    )


class NginxProcess:
    """One daemonized nginx rooted at ``workdir`` (``nginx.conf``, ``tmp/``, ``nginx.log``);
    found again, and stopped, from any process through its pid file."""

    def __init__(self, workdir: str | Path) -> None:
        self.workdir = Path(workdir).resolve()
        self.conf = self.workdir / "nginx.conf"
        self.tmp = self.workdir / "tmp"
        self.log = self.workdir / "nginx.log"

    @property
    def pid_file(self) -> Path:
        return self.tmp / "nginx.pid"  # where render_nginx_conf(tmp_dir=self.tmp) puts it

    def _pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
            return pid if "nginx" in psutil.Process(pid).name() else None
        except (OSError, ValueError, psutil.Error):
            return None

    def is_running(self) -> bool:
        return self._pid() is not None

    def start(self, conf_text: str, health_url: str, timeout: float = 30) -> None:
        """Write the config, check it (``nginx -t``), start nginx and wait until
        ``health_url`` answers. Raises ServingError with nginx's own words."""
        exe = nginx_binary()
        if exe is None:
            raise ServingError("nginx is not installed: apt-get install -y nginx-light")
        self.stop()
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(conf_text)
        base = [exe, "-e", str(self.log), "-c", str(self.conf)]
        checked = subprocess.run([*base, "-t"], capture_output=True, text=True, timeout=30)
        if checked.returncode != 0:
            raise ServingError(f"nginx refused {self.conf}: {checked.stderr.strip()}")
        # The master forks into the background once it listens; its stderr (error_log
        # stderr) and the access log (/dev/stdout) go to nginx.log.
        with self.log.open("ab") as out:
            started = subprocess.run(
                base, stdout=out, stderr=out, stdin=subprocess.DEVNULL, timeout=30
            )
        if started.returncode != 0:
            raise ServingError(f"nginx did not start: see {self.log}")
        deadline = time.monotonic() + timeout
        while True:
            try:
                requests.get(health_url, timeout=1)
                return
            except requests.RequestException as e:
                if time.monotonic() > deadline:
                    self.stop()
                    raise ServingError(f"nginx does not answer {health_url}: {e}") from e
            time.sleep(0.1)

    def reload(self, conf_text: str) -> None:
        """Swap the config of the running nginx: checked first (``nginx -t`` on a copy),
        then SIGHUP, which starts new workers and lets the old ones finish their
        requests. Returns once the new workers have taken over."""
        pid = self._pid()
        if pid is None:
            raise ServingError(f"nginx is not running (see {self.log})")
        candidate = self.workdir / "nginx.conf.new"
        candidate.write_text(conf_text)
        checked = subprocess.run(
            [nginx_binary() or "nginx", "-e", str(self.log), "-c", str(candidate), "-t"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if checked.returncode != 0:
            raise ServingError(f"nginx refused {candidate}: {checked.stderr.strip()}")
        old = {p.pid for p in psutil.Process(pid).children()}
        os.replace(candidate, self.conf)
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            workers = {p.pid for p in psutil.Process(pid).children()}
            if workers - old:
                return
            time.sleep(0.05)
        raise ServingError(f"nginx did not reload {self.conf}: see {self.log}")

    def stop(self, timeout: float = 15) -> None:
        """Graceful (in-flight requests finish), then forceful after ``timeout``."""
        pid = self._pid()
        if pid is None:
            return
        try:
            master = psutil.Process(pid)
            procs = [master, *master.children(recursive=True)]
            master.send_signal(signal.SIGQUIT)
        except psutil.Error:
            return
        _, alive = psutil.wait_procs(procs, timeout=timeout)
        for p in alive:
            p.kill()
        psutil.wait_procs(alive, timeout=5)
