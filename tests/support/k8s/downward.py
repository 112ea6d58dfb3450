"""The downward API as the kubelet resolves it for a container's env: ``fieldRef`` paths
into the pod (its name, namespace, uid, a label or an annotation by key), with the
empty string for a label or annotation the pod does not have."""

from __future__ import annotations

import re
from typing import Any

_KEYED = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")
_PLAIN = {
    "metadata.name": ("metadata", "name"),
    "metadata.namespace": ("metadata", "namespace"),
    "metadata.uid": ("metadata", "uid"),
    "spec.nodeName": ("spec", "nodeName"),
    "spec.serviceAccountName": ("spec", "serviceAccountName"),
    "status.podIP": ("status", "podIP"),
}


def field_value(pod: dict[str, Any], path: str) -> str:
    """The value of ``fieldRef.fieldPath`` ``path`` in ``pod`` (as the server has it)."""
    keyed = _KEYED.match(path)
    if keyed:
        return str((pod.get("metadata", {}).get(keyed.group(1)) or {}).get(keyed.group(2), ""))
    if path not in _PLAIN:
        raise ValueError(f"fieldRef {path!r}: not a field the downward API exposes in env")
    section, key = _PLAIN[path]
    return str((pod.get(section) or {}).get(key) or "")
