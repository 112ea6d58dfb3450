"""The API server: kmock's in-memory ``KubernetesEmulator`` with the semantics our code
relies on from a real one (listed in the package docstring). ``_handle`` routes each
request: the RBAC check first (``_authorize``), then pod logs, create, patch and delete
(deletion and the garbage collector: gc.py); what it does not take over goes to kmock's
own store."""

from __future__ import annotations

import base64
import copy
import itertools
import uuid
from typing import Any

import aiohttp.web
from kmock._internal import dicts
from kmock._internal.k8s import KubernetesEmulator, KubernetesError

from . import rbac
from .gc import GarbageCollector
from .logs import PodLog, serve_log
from .objects import field_matches, now_rfc3339, selector_matches, validate


class ApiServer(GarbageCollector, KubernetesEmulator):
    """kmock's emulator with the API-server semantics listed in the package docstring."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.resources.load_bundled()
        self.denied: set[tuple[str, str]] = set()
        self.rbac: rbac.Rbac | None = None  # Cluster sets the shipped RBAC
        self.forbidden: list[tuple[str, str, str, str | None]] = []
        self.logs: dict[tuple[str, str], PodLog] = {}
        self.rejected: list[tuple[str, str]] = []
        self._rv = itertools.count(1)

    # -- helpers running in the server's loop ----------------------------------------
    def _key(self, request: Any, name: str | None = None, ns: str | None = None) -> Any:
        return (request.resource, ns if ns is not None else request.namespace, name or request.name)

    def _current(self, key: Any) -> dict[str, Any] | None:
        if key in self.objects and not self.objects[key].deleted:
            return copy.deepcopy(self.objects[key].raw)
        return None

    def _refuse(self, status: int, reason: str, message: str) -> None:
        raise KubernetesError(status=status, reason=reason, message=message, details={"causes": []})

    def _check(self, obj: dict[str, Any], what: str) -> None:
        try:
            validate(obj)
        except Exception as e:
            msg = getattr(e, "message", None) or str(e)
            self.rejected.append((what, msg))
            self._refuse(422, "Invalid", f"{what} is invalid: {msg}")

    # -- routing ---------------------------------------------------------------------
    async def _handle(self, request: Any) -> Any:
        res = request.resource
        action = str(request.action.value).lower() if request.action else None
        if res is not None and res.plural is not None:
            verb = {"fetch": "get", "update": "patch"}.get(action or "", action or "")
            self._authorize(request, verb)
            if res not in self.resources:
                # a kind the server does not serve (a CRD not installed): 404, as for
                # any path the API server has no handler for
                self._refuse(404, "NotFound", "the server could not find the requested resource")
            if action == "fetch" and request.subresource == "log" and res.plural == "pods":
                return await self._serve_log(request)
            if action == "create" and isinstance(request.data, dict):
                self._on_create(request)
            elif action == "update" and request.name and isinstance(request.data, dict):
                self._on_patch(request)
            elif action == "delete" and request.name:
                return await self._on_delete(request)
            elif request.method and str(request.method.value).upper() == "PUT":
                self._refuse(405, "MethodNotAllowed", "this test API server takes PATCH, not PUT")
        response = await super()._handle(request)
        if action in ("create", "update"):
            # a new object may name an owner that is gone, a patch may have released
            # the last finalizer holding an owner's dependent: the collector runs after
            async with self._lock:
                await self._collect()
        return response

    def _authorize(self, request: Any, verb: str) -> None:
        """Refuse with 403 what the caller's Roles do not grant (rbac.py), and what
        ``Cluster.deny`` denied (a resource, or one subresource)."""
        res = request.resource
        sub = f"/{request.subresource}" if request.subresource else ""
        group = res.group or ""
        headers = request.headers or {}
        who = rbac.account(headers.get("Authorization") or headers.get("authorization"))
        if who is None:
            self._forbid(request, verb, "system:anonymous", "no service-account token")
        if self.rbac is not None and not self.rbac.allows(
            who, verb, group, f"{res.plural}{sub}", request.name
        ):
            roles = ", ".join(self.rbac.roles(who)) or "no Role"
            self._forbid(request, verb, f"system:serviceaccount:{request.namespace}:{who}", roles)
        if (verb, f"{res.plural}{sub}") in self.denied or (verb, res.plural) in self.denied:
            self._forbid(request, verb, f"system:serviceaccount:{request.namespace}:default", "")

    def _forbid(self, request: Any, verb: str, user: str, roles: str) -> None:
        res = request.resource
        sub = f"/{request.subresource}" if request.subresource else ""
        group = res.group or ""
        named = f' "{request.name}"' if request.name else ""
        self.forbidden.append((user, verb, f"{res.plural}{sub}", request.name))
        self._refuse(
            403,
            "Forbidden",
            f"{res.plural}{'.' + group if group else ''}{named} is forbidden: User "
            f'"{user}" cannot {verb} resource "{res.plural}{sub}" in API group "{group}" '
            f'in the namespace "{request.namespace}"' + (f" (bound: {roles})" if roles else ""),
        )

    # -- writes ----------------------------------------------------------------------
    def _on_create(self, request: Any) -> None:
        obj = request.data
        meta = obj.setdefault("metadata", {})
        ns = request.namespace or meta.get("namespace")
        if ns:
            meta["namespace"] = ns
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        key = self._key(request, meta.get("name"), ns)
        if self._current(key) is not None:
            return  # kmock answers 409
        if obj.get("kind") == "Secret" and "stringData" in obj:
            # the API server stores stringData as base64 data and never returns it
            data = obj.setdefault("data", {})
            for k, v in obj.pop("stringData").items():
                data[k] = base64.b64encode(v.encode()).decode()
        meta.update(
            uid=str(uuid.uuid4()),
            resourceVersion=str(next(self._rv)),
            creationTimestamp=now_rfc3339(),
            generation=1,
        )
        self._check(obj, f"{obj.get('kind')} {meta.get('name')}")

    def _on_patch(self, request: Any) -> None:
        key = self._key(request)
        old = self._current(key)
        if old is None:
            return  # kmock answers 404
        patch = request.data
        expected = (patch.get("metadata") or {}).get("resourceVersion")
        if expected and expected != old["metadata"].get("resourceVersion"):
            # optimistic concurrency, as the API server does it
            self._refuse(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {request.resource.plural} "{request.name}": '
                "the object has been modified; please apply your changes to the latest version",
            )
        merged = dicts.patch_dict(copy.deepcopy(old), copy.deepcopy(patch))
        meta = patch.setdefault("metadata", {})
        meta["resourceVersion"] = str(next(self._rv))
        if request.subresource != "status" and merged.get("spec") != old.get("spec"):
            meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        merged["metadata"].update(
            resourceVersion=meta["resourceVersion"],
            generation=meta.get("generation", merged["metadata"].get("generation")),
        )
        self._check(merged, f"{old.get('kind')} {request.name}")

    # -- deletion --------------------------------------------------------------------
    async def _on_delete(self, request: Any) -> Any:
        key = self._key(request)
        if self._current(key) is None:
            self._refuse(404, "NotFound", f'{request.resource.plural} "{request.name}" not found')
        body = request.data if isinstance(request.data, dict) else {}
        uid = (body.get("preconditions") or {}).get("uid")
        current_uid = self._current(key)["metadata"].get("uid")
        if uid and uid != current_uid:
            self._refuse(
                409,
                "Conflict",
                f"Precondition failed: UID in precondition: {uid}, "
                f"UID in object meta: {current_uid}",
            )
        asked = request.params.get("propagationPolicy") or body.get("propagationPolicy")
        self.deletions.append((request.resource.plural, request.name, asked))
        # batch/v1's default for Jobs orphans their pods, kept for compatibility
        policy = asked or ("Orphan" if request.resource.plural == "jobs" else "Background")
        grace = request.params.get("gracePeriodSeconds", body.get("gracePeriodSeconds"))
        async with self._lock:
            answer = await self._delete_object(key, policy, None if grace is None else int(grace))
            await self._collect()
        return aiohttp.web.json_response(answer)

    @property
    def deletions(self) -> list[tuple[str, str, str | None]]:
        """(plural, name, propagationPolicy) of every delete, in order."""
        if not hasattr(self, "_deletions"):
            self._deletions: list[tuple[str, str, str | None]] = []
        return self._deletions

    # -- reads -----------------------------------------------------------------------
    async def _serve_list(self, request: Any) -> Any:
        payload = await super()._serve_list(request)
        labels = request.params.get("labelSelector")
        fields = request.params.get("fieldSelector")
        items = payload["items"]
        if labels:
            items = [
                o
                for o in items
                if selector_matches(o.get("metadata", {}).get("labels") or {}, labels)
            ]
        if fields:
            items = [o for o in items if field_matches(o, fields)]
        return {**payload, "items": items}

    async def _serve_log(self, request: Any) -> Any:
        if self._current(self._key(request)) is None:
            self._refuse(404, "NotFound", f'pods "{request.name}" not found')
        entry = self.logs.get((request.namespace, request.name))
        if entry is None:
            self._refuse(
                400,
                "BadRequest",
                f'container "trainer" in pod "{request.name}" is waiting to start',
            )
        return await serve_log(
            request, entry, lambda: self._current(self._key(request)) is not None
        )
