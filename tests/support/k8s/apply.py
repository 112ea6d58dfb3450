"""``kubectl apply`` as the client does it by default (client-side apply), over the test
API server: the three-way strategic merge of the last applied configuration (the
``kubectl.kubernetes.io/last-applied-configuration`` annotation), the new manifest and
the live object. A field the manifest names is set to the manifest's value; one the
last apply named and this one does not is removed; one neither names (what a controller
or the serving deployer wrote) is left alone. Lists of named things (containers, env,
volumes, mounts, ports) merge by their key as the strategic merge patch does; other
lists (a command, args) are replaced whole.

The real kubectl cannot talk to the test API server (no OpenAPI documents, no
discovery kubectl accepts), hence this model of it; the result is written as a JSON
merge patch, which the server validates like any other write."""

from __future__ import annotations

import copy
import json
from typing import Any

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
# the strategic merge patch's patchMergeKey of the list fields our manifests use
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
    "topologySpreadConstraints": "topologyKey",
}


def _merge_key(field: str | None, items: list[Any]) -> str | None:
    if field == "ports":  # a container's ports, or a Service's
        return "containerPort" if any("containerPort" in i for i in items) else "port"
    return MERGE_KEYS.get(field or "")


def three_way(last: Any, new: Any, live: Any, field: str | None = None) -> Any:
    """What ``kubectl apply`` leaves: ``new`` merged into ``live``, minus what ``last``
    named and ``new`` no longer does."""
    if isinstance(new, dict) and isinstance(live, dict):
        out = copy.deepcopy(live)
        last = last if isinstance(last, dict) else {}
        for key in last.keys() - new.keys():
            out.pop(key, None)
        for key, value in new.items():
            out[key] = three_way(last.get(key), value, live.get(key), key)
        return out
    key = _merge_key(field, new) if isinstance(new, list) else None
    if key and isinstance(live, list) and all(isinstance(i, dict) for i in [*new, *live]):
        last_items = {i.get(key): i for i in last or [] if isinstance(i, dict)}
        live_items = {i.get(key): i for i in live}
        merged = [
            three_way(last_items.get(i.get(key)), i, live_items.get(i.get(key), {}), None)
            for i in new
        ]
        named = {i.get(key) for i in new} | set(last_items)
        return merged + [copy.deepcopy(i) for i in live if i.get(key) not in named]
    return copy.deepcopy(new)


def _path(obj: dict[str, Any]) -> str:
    api = obj["apiVersion"]
    base = f"/api/{api}" if "/" not in api else f"/apis/{api}"
    plural = obj["kind"].lower() + ("es" if obj["kind"].endswith("s") else "s")
    return f"{base}/namespaces/{obj['metadata']['namespace']}/{plural}"


def kubectl_apply(api: Any, obj: dict[str, Any]) -> dict[str, Any]:
    """Apply ``obj`` (a namespaced object) as ``kubectl apply`` does, through the API at
    ``api``'s host; the live result."""
    import requests

    from visionline.kube import merge_patch

    host = api.configuration.host.rstrip("/")
    # the caller's credentials, as kubectl sends its kubeconfig user's
    auth = {"Authorization": api.configuration.get_api_key_with_prefix("authorization") or ""}
    new = copy.deepcopy(obj)
    applied = json.dumps(obj, sort_keys=True)
    collection, name = host + _path(obj), obj["metadata"]["name"]

    def answer(r: requests.Response) -> dict[str, Any]:
        if r.status_code >= 300:
            raise RuntimeError(f"{r.request.method} {r.url}: {r.status_code} {r.text[:500]}")
        return r.json()

    got = requests.get(f"{collection}/{name}", headers=auth, timeout=30)
    if got.status_code == 404:
        new["metadata"].setdefault("annotations", {})[LAST_APPLIED] = applied
        return answer(requests.post(collection, json=new, headers=auth, timeout=30))
    live = answer(got)
    last = json.loads((live["metadata"].get("annotations") or {}).get(LAST_APPLIED) or "{}")
    result = three_way(last, new, live)
    result["metadata"].setdefault("annotations", {})[LAST_APPLIED] = applied
    patch = merge_patch(live, result)
    if not patch:
        return live
    return answer(
        requests.patch(
            f"{collection}/{name}",
            data=json.dumps(patch),
            headers={**auth, "Content-Type": "application/merge-patch+json"},
            timeout=30,
        )
    )
