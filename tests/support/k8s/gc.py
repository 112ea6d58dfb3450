"""Deletion as the API server and the garbage collector do it, over kmock's store.

- A DELETE honours ``propagationPolicy``. ``Foreground``: the owner stays visible, with
  ``metadata.deletionTimestamp`` and the finalizer ``foregroundDeletion``, while its
  dependents (objects whose ``ownerReferences`` name its uid) are deleted; it goes once
  none with ``blockOwnerDeletion`` is left. ``Background``: the owner goes at once and
  its dependents after it. ``Orphan``: the dependents lose their reference and stay.
- ``ownerReferences`` are garbage-collected: an object whose owners are all gone is
  deleted, whichever way they went (so an object created with a reference to an owner
  that does not exist goes too).
- A pod bound to a node (``spec.nodeName``) and not finished is deleted gracefully: it
  gets a ``deletionTimestamp`` and ``deletionGracePeriodSeconds`` and stays until its
  kubelet has stopped it and confirms with a ``gracePeriodSeconds: 0`` delete.
- Other finalizers hold an object the same way until whoever owns them removes them.

Every change is a watch event carrying the changed object's own body.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

FOREGROUND = "foregroundDeletion"
_TERMINAL = ("Succeeded", "Failed")
_DEFAULT_POD_GRACE = 30  # the API's default terminationGracePeriodSeconds


def _rfc3339(seconds_from_now: float = 0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds_from_now)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("metadata") or {}


def _in_foreground_deletion(obj: dict[str, Any]) -> bool:
    meta = _meta(obj)
    return bool(meta.get("deletionTimestamp")) and FOREGROUND in (meta.get("finalizers") or [])


def pod_grace(pod: dict[str, Any], requested: int | None) -> int:
    """The grace period a pod's deletion gets, as the API server's pod strategy decides
    it: 0 (gone at once) when no kubelet runs it (not bound to a node) or it finished."""
    spec = pod.get("spec") or {}
    if not spec.get("nodeName") or (pod.get("status") or {}).get("phase") in _TERMINAL:
        return 0
    if requested is not None:
        return max(0, int(requested))
    return int(spec.get("terminationGracePeriodSeconds", _DEFAULT_POD_GRACE))


class GarbageCollector:
    """Mixed into ``ApiServer``: deletion and garbage collection over kmock's
    ``objects`` (soft-deleted versioned dicts), its watch buses and our resourceVersions.
    Callers hold the emulator's lock."""

    objects: Any
    _buses: Any
    _rv: Any

    # -- the store ------------------------------------------------------------------
    def _live(self) -> dict[Any, dict[str, Any]]:
        return {key: o.raw for key, o in self.objects.items() if not o.deleted}

    async def _modify(self, key: Any, meta: dict[str, Any]) -> dict[str, Any]:
        """Merge ``meta`` into the object's metadata (``None`` removes a key)."""
        self.objects[key].patch({"metadata": {**meta, "resourceVersion": str(next(self._rv))}})
        body = copy.deepcopy(self.objects[key].raw)
        await self._buses[key[0]].put({"type": "MODIFIED", "object": body})
        return body

    async def _remove(self, key: Any) -> dict[str, Any]:
        body = copy.deepcopy(self.objects[key].raw)
        self.objects[key].delete()
        # the event carries the removed object's own body (watchers key on it)
        await self._buses[key[0]].put({"type": "DELETED", "object": body})
        return body

    def _dependents(self, uid: str, live: dict[Any, dict[str, Any]]) -> list[Any]:
        return [
            key
            for key, obj in live.items()
            if any(r.get("uid") == uid for r in _meta(obj).get("ownerReferences") or [])
        ]

    def _blocked(self, uid: str, live: dict[Any, dict[str, Any]]) -> bool:
        """Whether a dependent with ``blockOwnerDeletion`` still holds ``uid``'s owner."""
        return any(
            r.get("uid") == uid and r.get("blockOwnerDeletion")
            for obj in live.values()
            for r in _meta(obj).get("ownerReferences") or []
        )

    # -- one DELETE -----------------------------------------------------------------
    async def _delete_object(self, key: Any, policy: str, grace: int | None) -> dict[str, Any]:
        """What a DELETE does to the object at ``key``; the body to answer with."""
        obj = self.objects[key].raw
        meta = _meta(obj)
        if key[0].plural == "pods":
            seconds = pod_grace(obj, grace)
            if seconds > 0:
                if meta.get("deletionTimestamp"):
                    return copy.deepcopy(obj)
                # its kubelet stops it, then confirms with gracePeriodSeconds 0
                return await self._modify(
                    key,
                    {"deletionTimestamp": _rfc3339(seconds), "deletionGracePeriodSeconds": seconds},
                )
        elif meta.get("deletionTimestamp"):
            return copy.deepcopy(obj)  # already being deleted
        live = self._live()
        dependents = self._dependents(meta["uid"], live)
        if policy == "Orphan":
            for dkey in dependents:
                refs = [
                    r
                    for r in _meta(live[dkey]).get("ownerReferences") or []
                    if r.get("uid") != meta["uid"]
                ]
                await self._modify(dkey, {"ownerReferences": refs or None})
        elif policy == "Foreground" and dependents:
            body = await self._modify(
                key,
                {
                    "deletionTimestamp": meta.get("deletionTimestamp") or _rfc3339(),
                    "finalizers": [*(meta.get("finalizers") or []), FOREGROUND],
                },
            )
            await self._delete_dependents(dependents)
            return body  # _collect removes it once no blocking dependent is left
        if meta.get("finalizers"):
            if meta.get("deletionTimestamp"):
                return copy.deepcopy(obj)
            return await self._modify(key, {"deletionTimestamp": _rfc3339()})
        return await self._remove(key)

    async def _delete_dependents(self, dependents: list[Any]) -> None:
        """The garbage collector deletes an owner's dependents in the foreground too."""
        for dkey in dependents:
            if not self.objects[dkey].deleted:
                await self._delete_object(dkey, "Foreground", None)

    # -- the garbage collector ------------------------------------------------------
    async def _collect(self) -> None:
        """Run the garbage collector until nothing is left to do (after every write)."""
        while await self._collect_one():
            pass

    async def _collect_one(self) -> bool:
        """Take one step; False when there was none to take."""
        live = self._live()
        by_uid = {_meta(o).get("uid"): o for o in live.values()}
        for key, obj in live.items():
            meta = _meta(obj)
            refs = meta.get("ownerReferences") or []
            if refs and not meta.get("deletionTimestamp"):
                owners = [by_uid.get(r.get("uid")) for r in refs]
                if all(o is None for o in owners):
                    # every owner is gone: the second half of a Background deletion
                    await self._delete_object(key, "Background", None)
                    return True
                if any(o is not None and _in_foreground_deletion(o) for o in owners):
                    # created after its owner's foreground deletion began
                    await self._delete_object(key, "Foreground", None)
                    return True
            if FOREGROUND in (meta.get("finalizers") or []) and not self._blocked(
                meta["uid"], live
            ):
                rest = [f for f in meta["finalizers"] if f != FOREGROUND]
                if rest:
                    await self._modify(key, {"finalizers": rest})
                else:
                    await self._remove(key)
                return True
        return False
