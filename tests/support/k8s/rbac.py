"""RBAC as the API server evaluates it, from the Roles and RoleBindings we ship.

Every request names who sends it (a bearer token, as a pod's service-account token does):
``Cluster.api_client()`` is the pipeline's service account, the code under test by default,
``Cluster.api_client(as_=...)`` another account, and ``Cluster.admin_client()`` the test
itself and the controllers (kubectl as a cluster admin). A service account may do what the
Roles bound to it in the rendered ``k8s/overlays/local`` grant, nothing else: the overlay is
treated as applied to whatever namespace a test uses (kustomize's namespace transform), so
the rules, not the namespace name, decide. A refusal is a 403 worded as the API server's."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

ADMIN = "cluster-admin"
PIPELINE = "visionline-pipeline"
WORKER = "visionline-worker"
_PREFIX = "sa:"


@dataclass(frozen=True)
class Rule:
    role: str
    groups: frozenset[str]
    resources: frozenset[str]
    verbs: frozenset[str]
    names: frozenset[str]  # empty: every name

    def allows(self, verb: str, group: str, resource: str, name: str | None) -> bool:
        return (
            (group in self.groups or "*" in self.groups)
            and (resource in self.resources or "*" in self.resources)
            and (verb in self.verbs or "*" in self.verbs)
            # resourceNames cannot restrict create or list (the name is not known yet)
            and (not self.names or (name is not None and name in self.names))
        )


class Rbac:
    """Which rules each service account holds, through its RoleBindings."""

    def __init__(self, objects: Iterable[dict[str, Any]]) -> None:
        objects = list(objects)
        roles = {
            o["metadata"]["name"]: o.get("rules") or [] for o in objects if o["kind"] == "Role"
        }
        self.rules: dict[str, list[Rule]] = {}
        for b in (o for o in objects if o["kind"] == "RoleBinding"):
            role = b["roleRef"]["name"]
            for s in b.get("subjects") or []:
                if s.get("kind") != "ServiceAccount":
                    continue
                self.rules.setdefault(s["name"], []).extend(
                    Rule(
                        role,
                        frozenset(r.get("apiGroups") or []),
                        frozenset(r.get("resources") or []),
                        frozenset(r.get("verbs") or []),
                        frozenset(r.get("resourceNames") or []),
                    )
                    for r in roles.get(role, [])
                )

    def allows(self, account: str, verb: str, group: str, resource: str, name: str | None) -> bool:
        if account == ADMIN:
            return True
        return any(r.allows(verb, group, resource, name) for r in self.rules.get(account, []))

    def roles(self, account: str) -> list[str]:
        return sorted({r.role for r in self.rules.get(account, [])})


@cache
def shipped(components: tuple[str, ...] = ()) -> Rbac:
    """The RBAC of the rendered local overlay (what `kubectl apply -k` installs), with
    the optional ``components`` (``k8s/components/<name>``) an operator adds to it."""
    from tests.support.manifests import render, render_with

    overlay = "k8s/overlays/local"
    return Rbac(render_with(overlay, components) if components else render(overlay))


def token(account: str) -> str:
    return _PREFIX + account


def account(authorization: str | None) -> str | None:
    """The service account a request's ``Authorization`` header names; None if none."""
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not value.startswith(_PREFIX):
        return None
    return value[len(_PREFIX) :]
