"""A container runtime for the test kubelet, strict where signals are concerned: each
container runs as PID 1 of its own PID namespace (``unshare --pid --fork --mount-proc``,
as root), with the image's ENTRYPOINT and CMD read from the Dockerfile (the stage its
image name names: ``visionline-trainer`` -> ``trainer``), ``command``/``args`` and
``$(VAR)`` expansion as the kubelet does them, and signals sent to the container's PID 1
from outside its namespace, as the runtime sends them. The kernel then treats that
process as a container's init: a signal it has no handler for is dropped (only SIGKILL
always lands), so Python without a SIGTERM handler, as PID 1, ignores SIGTERM, and a tini
without ``-g`` passes SIGTERM to its child alone, not to the child's DataLoader workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from functools import cache
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


@cache
def image_config(target: str, dockerfile: Path = REPO / "Dockerfile") -> dict[str, list[str]]:
    """ENTRYPOINT and CMD (exec form) of stage ``target``, inherited from the stage it is
    built FROM when it sets none, as a builder resolves them."""
    stages: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if m:
            current = {"from": m.group(1)}
            stages[m.group(2) or m.group(1)] = current
            continue
        m = re.match(r"(ENTRYPOINT|CMD)\s+(\[.*\])\s*$", line)
        if m and current is not None:
            current[m.group(1).lower()] = json.loads(m.group(2))
    out: dict[str, list[str]] = {"entrypoint": [], "cmd": []}
    name: str | None = target
    seen = set()
    while name in stages and name not in seen:
        seen.add(name)
        for key in ("entrypoint", "cmd"):
            if not out[key] and key in stages[name]:
                out[key] = stages[name][key]
        name = stages[name]["from"]
    return out


def image_target(image: str) -> str | None:
    """The Dockerfile stage an image name stands for (None: an image of someone else)."""
    base = image.rsplit("/", 1)[-1].split(":", 1)[0]
    return base.removeprefix("visionline-") if base.startswith("visionline-") else None


def expand(value: str, env: dict[str, str]) -> str:
    """``$(VAR)`` from the container's env, ``$$`` an escaped ``$``, an unknown
    ``$(VAR)`` kept as written: the kubelet's expansion of command and args."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR.sub(one, value)


def container_argv(container: dict[str, Any], env: dict[str, str]) -> list[str]:
    """What the runtime executes: ``command`` replaces the ENTRYPOINT (and drops CMD),
    ``args`` alone replace CMD; both are expanded from the env."""
    target = image_target(container.get("image", ""))
    img = image_config(target) if target else {"entrypoint": [], "cmd": []}
    command, args = container.get("command"), container.get("args")
    if command:
        argv = [expand(c, env) for c in command] + [expand(a, env) for a in args or []]
    elif args is not None:
        argv = img["entrypoint"] + [expand(a, env) for a in args]
    else:
        argv = img["entrypoint"] + img["cmd"]
    if not argv:
        raise ValueError(f"container {container.get('name')}: nothing to run")
    # the image's interpreter is this venv's
    return [sys.executable if a in ("python", "python3") else a for a in argv]


def pid1_available() -> bool:
    return os.geteuid() == 0 and shutil.which("unshare") is not None


class Pid1Process:
    """A container whose first process is PID 1 of its own PID namespace. Looks like
    ``subprocess.Popen`` to the kubelet (``stdout``, ``poll``, ``wait``, ``send_signal``,
    ``kill``); signals go to the container's PID 1, not to ``unshare``."""

    def __init__(
        self, argv: list[str], network: tuple[str, Path] | None = None, **popen: Any
    ) -> None:
        """``network``: (hostname, hosts file) of a pod with a name of its own (an Indexed
        Job's): the container gets its own UTS namespace with that hostname and the file
        bind-mounted over ``/etc/hosts`` in its mount namespace; ``sh`` then ``exec``s the
        container's command, which so stays PID 1."""
        for tool in argv[:1]:
            if "/" in tool and not Path(tool).exists():
                raise FileNotFoundError(f"{tool}: the image's ENTRYPOINT is not installed here")
        ns = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
        if network is not None:
            host, hosts = network
            setup = 'hostname "$0" && mount --bind "$1" /etc/hosts && shift && exec "$@"'
            argv = ["sh", "-c", setup, host, str(hosts), *argv]
            ns.insert(1, "--uts")
        self._proc = subprocess.Popen([*ns, *argv], **popen)
        self.stdout = self._proc.stdout
        self.pid = self._proc.pid
        self._init: int | None = None
        self._sigkilled = False

    def init_pid(self, timeout: float = 10.0) -> int | None:
        """PID 1 of the container, as this machine's PID namespace numbers it."""
        deadline = time.monotonic() + timeout
        while self._init is None and time.monotonic() < deadline and self.poll() is None:
            try:
                children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
            except OSError:
                break
            if children.split():
                self._init = int(children.split()[0])
            else:
                time.sleep(0.01)
        return self._init

    def _status(self, rc: int | None) -> int | None:
        """``unshare`` passes its child's exit on, and re-raises a signal that ended it,
        except SIGKILL (it cannot take that signal's default back): it exits 1 then."""
        if rc == 1 and self._sigkilled:
            return -signal.SIGKILL
        return rc

    def poll(self) -> int | None:
        return self._status(self._proc.poll())

    def wait(self, timeout: float | None = None) -> int:
        return self._status(self._proc.wait(timeout)) or 0

    @property
    def returncode(self) -> int | None:
        return self._status(self._proc.returncode)

    def send_signal(self, sig: int) -> None:
        pid = self.init_pid()
        if pid is None or self.poll() is not None:
            return
        self._sigkilled |= sig == signal.SIGKILL
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        # SIGKILL reaches a namespace's init from outside; with it the namespace goes
        self.send_signal(signal.SIGKILL)


def env_from(core: Any, api: Any, namespace: str, container: dict[str, Any]) -> dict[str, str]:
    """The container's ``envFrom``: every key of each ConfigMap and Secret (a Secret's
    values decoded), with its ``prefix``; a missing source fails the container unless it
    is ``optional``, as the kubelet does (CreateContainerConfigError)."""
    import base64

    from kubernetes.client.exceptions import ApiException

    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        ref = source.get("configMapRef") or source.get("secretRef") or {}
        try:
            if "configMapRef" in source:
                obj = api.sanitize_for_serialization(
                    core.read_namespaced_config_map(ref["name"], namespace)
                )
                data = dict(obj.get("data") or {})
            else:
                obj = api.sanitize_for_serialization(
                    core.read_namespaced_secret(ref["name"], namespace)
                )
                data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        except ApiException as e:
            if e.status == 404 and ref.get("optional"):
                continue
            raise
        env.update({prefix + k: v for k, v in data.items()})
    return env
