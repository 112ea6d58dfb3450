"""What a container of a serving pod sees, laid out on this host: its volumes
(``emptyDir`` directories, ``configMap`` and ``secret`` files read through the API) and
its mounts, its environment (values, ``secretKeyRef``, ``configMapKeyRef``, ``envFrom``)
and its argv (``command`` and ``args`` with the kubelet's ``$(VAR)`` expansion).

Each pod has its own network namespace (sandbox.py) but shares this host's filesystem:
a mount path (``/work``, ``/tmp``, ``/etc/visionline/...``) is moved to the pod's own
directory wherever the pod names it (argv, env values, probe and hook commands, the
ConfigMap's files). Ports never move. Programs the image provides run from this host:
``python`` is this interpreter, an ``args``-only container runs its first argument (the
image's entrypoint, tini, only passes it on), from this environment's bin when there."""

from __future__ import annotations

import base64
import os
import re
import sys
from pathlib import Path
from typing import Any

_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(s: str, env: dict[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion: defined variables only, ``$$`` escapes."""
    return _VAR.sub(lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), s)


class PodFS:
    """The pod's volumes under ``root`` and the path map of its mounts."""

    def __init__(self, root: Path, pod: dict[str, Any], api: Any) -> None:
        from kubernetes import client  # the optional client, as in the adapters

        self.api = api
        self.core = client.CoreV1Api(api)
        self.namespace = pod["metadata"]["namespace"]
        self.spec = pod["spec"]
        self.root = root
        self.dirs: dict[str, Path] = {}
        for v in self.spec.get("volumes") or []:
            self.dirs[v["name"]] = root / "volumes" / v["name"]
            self.dirs[v["name"]].mkdir(parents=True, exist_ok=True)
        self.paths: dict[str, Path] = {}
        for c in [*(self.spec.get("initContainers") or []), *self.spec["containers"]]:
            for m in c.get("volumeMounts") or []:
                self.paths[m["mountPath"]] = self.dirs[m["name"]]
        for v in self.spec.get("volumes") or []:
            self._fill(v)

    def _read(self, kind: str, name: str, optional: bool = False) -> dict[str, str]:
        read = self.core.read_namespaced_secret if kind == "secret" else None
        read = read or self.core.read_namespaced_config_map
        try:
            obj = self.api.sanitize_for_serialization(read(name, self.namespace))
        except Exception:
            if optional:
                return {}
            raise
        data = obj.get("data") or {}
        if kind == "secret":
            return {k: base64.b64decode(v).decode() for k, v in data.items()}
        return dict(data)

    def _fill(self, volume: dict[str, Any]) -> None:
        if "configMap" in volume:
            files = self._read("configmap", volume["configMap"]["name"])
            files = {k: self.text(v) for k, v in files.items()}
        elif "secret" in volume:
            files = self._read("secret", volume["secret"]["secretName"])
        else:
            return
        for key, value in files.items():
            (self.dirs[volume["name"]] / key).write_text(value)

    def text(self, s: str) -> str:
        """Mount paths in ``s`` moved to the pod's directories, in one pass."""
        if not self.paths:
            return s
        pattern = "|".join(re.escape(m) for m in sorted(self.paths, key=len, reverse=True))
        return re.sub(
            rf"(?<![\w/.-])({pattern})(?=/|$|[^\w.-])",
            lambda m: str(self.paths[m[1]]),
            s,
            flags=re.M,
        )

    def env(self, container: dict[str, Any]) -> dict[str, str]:
        """The container's environment, as the kubelet resolves it, paths moved."""
        env: dict[str, str] = {}
        for src in container.get("envFrom") or []:
            for kind in ("configMapRef", "secretRef"):
                if kind in src:
                    ref = src[kind]
                    which = "secret" if kind == "secretRef" else "configmap"
                    env.update(self._read(which, ref["name"], ref.get("optional", False)))
        for e in container.get("env") or []:
            if "value" in e:
                env[e["name"]] = expand(e["value"], env)
                continue
            for kind, which in (("secretKeyRef", "secret"), ("configMapKeyRef", "configmap")):
                ref = (e.get("valueFrom") or {}).get(kind)
                if ref:
                    data = self._read(which, ref["name"], ref.get("optional", False))
                    if ref["key"] in data:
                        env[e["name"]] = data[ref["key"]]
                    elif not ref.get("optional"):
                        raise KeyError(f"{which} {ref['name']} has no key {ref['key']}")
        env = {k: self.text(v) for k, v in env.items()}
        host = {k: os.environ[k] for k in ("PATH", "PYTHONPATH", "LANG") if k in os.environ}
        return {**host, **env}

    def argv(self, container: dict[str, Any], env: dict[str, str]) -> list[str]:
        """``command`` + ``args`` expanded and moved; the image's programs from here."""
        argv = [*(container.get("command") or []), *(container.get("args") or [])]
        argv = [self.text(expand(a, env)) for a in argv]
        return program(argv)


def program(argv: list[str]) -> list[str]:
    """``argv`` with the image's programs found on this host."""
    if not argv:
        return argv
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    local = Path(sys.executable).parent / argv[0]
    if "/" not in argv[0] and local.exists():
        return [str(local), *argv[1:]]
    if argv[0] == "nginx" and os.geteuid() == 0 and "-g" in argv:
        # nginx started as root hands its workers to `nobody`, who cannot read pytest's
        # private directories; in the pod it runs as uid 10001 and never switches user
        i = argv.index("-g") + 1
        return [*argv[:i], argv[i] + " user root;", *argv[i + 1 :]]
    return argv
