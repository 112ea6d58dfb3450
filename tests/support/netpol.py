"""NetworkPolicy egress as the API defines it (networking.k8s.io/v1), for the manifests'
tests: which rendered policies select a pod, and whether they let it open a connection to
a destination. A destination is an address and port, plus the labels of the pod and of
its namespace where the address is a pod's (ipBlock peers match addresses, pod and
namespace selectors match pods only). No CNI runs here; these are the rules a CNI
enforces, read as written in the API reference."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

NAMESPACE = "visionline"


@dataclass(frozen=True)
class Destination:
    ip: str
    port: int
    protocol: str = "TCP"
    # For a pod: its labels, and its namespace's (kubernetes.io/metadata.name included).
    pod_labels: dict[str, str] | None = None
    namespace_labels: dict[str, str] = field(default_factory=dict)


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector: matchLabels and matchExpressions, ANDed; {} selects everything."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def egress_policies(objects: list[dict], pod_labels: dict[str, str]) -> list[dict]:
    """The policies in the namespace that restrict this pod's egress."""
    return [
        p
        for p in objects
        if p["kind"] == "NetworkPolicy"
        and "Egress" in p["spec"].get("policyTypes", [])
        and selects(p["spec"]["podSelector"], pod_labels)
    ]


def _peer_matches(peer: dict[str, Any], dest: Destination) -> bool:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        ip = ipaddress.ip_address(dest.ip)
        if ip not in ipaddress.ip_network(block["cidr"]):
            return False
        return not any(ip in ipaddress.ip_network(c) for c in block.get("except", []))
    if dest.pod_labels is None:
        return False  # selectors match pods, never other addresses
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], dest.namespace_labels):
            return False
    elif dest.namespace_labels.get("kubernetes.io/metadata.name") != NAMESPACE:
        return False  # a podSelector alone: pods of the policy's own namespace
    return selects(peer.get("podSelector") or {}, dest.pod_labels)


def _port_matches(ports: list[dict[str, Any]] | None, dest: Destination) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != dest.protocol:
            continue
        if "port" not in p:
            return True
        low = p["port"]
        if not isinstance(low, int):
            raise AssertionError(f"named port {low!r} in an egress rule: not modelled here")
        if low <= dest.port <= p.get("endPort", low):
            return True
    return False


def egress_allowed(objects: list[dict], pod_labels: dict[str, str], dest: Destination) -> bool:
    """Whether a pod with these labels may connect to ``dest``: free when no policy
    restricts its egress, else when some rule of some selecting policy allows it."""
    policies = egress_policies(objects, pod_labels)
    if not policies:
        return True
    for policy in policies:
        for rule in policy["spec"].get("egress") or []:
            peers = rule.get("to")
            peer_ok = not peers or any(_peer_matches(peer, dest) for peer in peers)
            if peer_ok and _port_matches(rule.get("ports"), dest):
                return True
    return False
