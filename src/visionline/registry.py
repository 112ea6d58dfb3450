"""Model registry in the artifact store.

    models/<name>/<version>/{<name>.mar, sha256, model_card.md, model.json}
    models/<name>/aliases.json        {"champion": v, "previous": v, "history": [...]}
    models/<name>/log/<time>-<action>.json   append-only promotion log (one object each)

Versions are 1, 2, 3... A packager claims its version by creating
``models/<name>/<version>/claim.json`` with a conditional write (``put_if_absent``), so two
packagers running at once never get the same number; ``model.json`` is written last and
marks a version complete. Aliases are the one mutable object, changed only through a
compare-and-swap loop (``update_json``), so concurrent promotions and rollbacks never
lose one another; the champion history is a stack, so a rollback restores the version
before and ``previous`` always means "what a rollback would serve".
"""

from __future__ import annotations

import getpass
import json
import re
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from visionline.errors import KeyNotFoundError, VisionlineError
from visionline.storage import ArtifactStore


class RegistryError(VisionlineError):
    pass


ALIASES = ("champion", "previous")
# How every command that takes a model reads it; said in each error about one.
MODEL_REF_FORMS = "NAME, NAME:VERSION or NAME:ALIAS"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str

    @property
    def prefix(self) -> str:
        return f"models/{self.name}/{self.version}"

    @property
    def mar_key(self) -> str:
        return f"{self.prefix}/{self.name}.mar"

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"


class Registry:
    def __init__(self, store: ArtifactStore, name: str) -> None:
        if not _NAME.fullmatch(name):
            raise RegistryError(
                f"invalid model name {name!r}: a name is letters, digits, _ and -, starting "
                "with a letter or digit (no :VERSION here)"
            )
        self.store = store
        self.name = name

    # -- versions ---------------------------------------------------------------------
    def _info_key(self, version: str) -> str:
        return f"models/{self.name}/{version}/model.json"

    def versions(self) -> list[str]:
        found = set()
        for key in self.store.list(f"models/{self.name}/"):
            parts = key.split("/")
            if len(parts) == 4 and parts[3] == "model.json" and parts[2].isdigit():
                found.add(parts[2])
        return sorted(found, key=int)

    def info(self, version: str) -> dict[str, Any]:
        key = self._info_key(version)
        if not self.store.exists(key):
            raise KeyNotFoundError(
                f"model {self.name}:{version} does not exist in {self.store.uri}"
            )
        return self.store.get_json(key)

    def next_version(self) -> str:
        existing = [int(v) for v in self.versions()]
        # also skip versions whose upload started but never completed
        partial = [
            int(k.split("/")[2])
            for k in self.store.list(f"models/{self.name}/")
            if k.count("/") >= 3 and k.split("/")[2].isdigit()
        ]
        return str(max(existing + partial, default=0) + 1)

    def allocate_version(self, run_id: str, attempts: int = 1000) -> str:
        """Claim the next free version number for ``run_id``'s archive. Concurrent callers
        get distinct numbers: each claim is a create-if-absent, and a caller that loses a
        number moves on to the next."""
        version = int(self.next_version())
        for _ in range(attempts):
            claim = {
                "run_id": run_id,
                "claimed_at": datetime.now(UTC).isoformat(),
                "actor": _actor(),
                "host": socket.gethostname(),
            }
            key = f"models/{self.name}/{version}/claim.json"
            if self.store.put_if_absent(key, _json_bytes(claim)):
                return str(version)
            version = max(version + 1, int(self.next_version()))
        raise RegistryError(f"could not claim a version of {self.name} in {attempts} attempts")

    def find_by_run(self, run_id: str) -> str | None:
        for v in self.versions():
            if self.info(v).get("run_id") == run_id:
                return v
        return None

    def register(self, version: str, info: dict[str, Any]) -> ModelRef:
        self.store.put_json(
            self._info_key(version), {**info, "name": self.name, "version": version}
        )
        self._log("register", version, reason=f"run {info.get('run_id')}")
        return ModelRef(self.name, version)

    # -- aliases ------------------------------------------------------------------------
    @property
    def _aliases_key(self) -> str:
        return f"models/{self.name}/aliases.json"

    def aliases(self) -> dict[str, Any]:
        if not self.store.exists(self._aliases_key):
            return {"champion": None, "previous": None, "history": []}
        return self.store.get_json(self._aliases_key)

    @staticmethod
    def _aliases_of(history: list[str]) -> dict[str, Any]:
        return {
            "champion": history[-1] if history else None,
            "previous": history[-2] if len(history) > 1 else None,
            "history": history,
        }

    def _update_history(self, change: Any) -> tuple[dict[str, Any], bool]:
        """Apply ``change(history) -> new history`` atomically against concurrent
        writers; (aliases now, whether this call changed them)."""
        changed = False

        def apply(current: dict[str, Any] | None) -> dict[str, Any]:
            nonlocal changed
            history = list((current or {}).get("history") or [])
            new = change(list(history))
            changed = new != history
            return self._aliases_of(new) if changed else (current or self._aliases_of(history))

        return self.store.update_json(self._aliases_key, apply), changed

    def resolve(self, spec: str | None = None) -> ModelRef:
        """``None``/``champion``/``previous``/a version number -> a ModelRef that exists.
        Anything else, or a version that is not there, is refused with what exists."""
        spec = spec or "champion"
        if spec in ALIASES:
            version = self.aliases().get(spec)
            if version is None:
                raise KeyNotFoundError(
                    f"model {self.name} has no {spec} yet: package and promote a run "
                    f"({self.describe()})"
                )
            self.info(version)
            return ModelRef(self.name, version)
        if not spec.isdigit() or not self.store.exists(self._info_key(spec)):
            raise KeyNotFoundError(
                f"model {self.name}:{spec} does not exist: {self.describe()}; "
                f"expected {MODEL_REF_FORMS}"
            )
        return ModelRef(self.name, spec)

    def describe(self) -> str:
        """What exists of this model, for a message about a reference that does not."""
        versions = self.versions()
        if not versions:
            others = ", ".join(model_names(self.store)) or "none"
            return f"no model {self.name!r} in {self.store.uri}; models there: {others}"
        aliases = self.aliases()
        set_ = [a for a in ALIASES if aliases.get(a)]
        return f"model {self.name!r} has versions {', '.join(versions)}" + (
            f" and aliases {', '.join(set_)}" if set_ else " and no aliases yet"
        )

    def promote(self, version: str, reason: str = "") -> dict[str, Any]:
        self.info(version)
        a, changed = self._update_history(lambda h: h if h and h[-1] == version else [*h, version])
        if changed:
            self._log("promote", version, reason)
        return a

    def rollback(self, reason: str = "") -> dict[str, Any]:
        demoted: list[str] = []

        def pop(history: list[str]) -> list[str]:
            if len(history) < 2:
                raise RegistryError(f"model {self.name} has no previous champion to roll back to")
            demoted[:] = [history[-1]]
            return history[:-1]

        a, _ = self._update_history(pop)
        self._log(
            "rollback",
            a["champion"],
            reason or f"rolled back from {demoted[0]}",
            demoted=demoted[0],
        )
        return a

    # -- log ------------------------------------------------------------------------------
    def _log(self, action: str, version: str, reason: str = "", **extra: Any) -> None:
        now = datetime.now(UTC)
        event = {
            "time": now.isoformat(),
            "action": action,
            "version": version,
            "reason": reason,
            "actor": _actor(),
            **extra,
        }
        # time first (the log reads in order), then a random part: two writers in the same
        # microsecond must not overwrite each other's event
        key = f"models/{self.name}/log/{now.strftime('%Y%m%dT%H%M%S%fZ')}-{action}-{uuid.uuid4().hex[:8]}.json"
        self.store.put_if_absent(key, _json_bytes(event))

    def log(self) -> list[dict[str, Any]]:
        return [self.store.get_json(k) for k in self.store.list(f"models/{self.name}/log/")]


def model_names(store: ArtifactStore) -> list[str]:
    """Every model with at least one complete version."""
    return sorted(
        {
            parts[1]
            for parts in (key.split("/") for key in store.list("models/"))
            if len(parts) == 4 and parts[3] == "model.json"
        }
    )


def parse_model_ref(spec: str, default_name: str | None = None) -> tuple[str, str | None]:
    """What a user typed for a model -> (name, version or alias; None: the champion).

    ``NAME``, ``NAME:VERSION`` and ``NAME:ALIAS``. Given ``default_name``, a bare VERSION
    or ALIAS means that model's (``visionline models show 2``), as it always has.
    """
    name, sep, selector = spec.strip().partition(":")
    if not sep and default_name and (name.isdigit() or name in ALIASES):
        return default_name, name
    if not _NAME.fullmatch(name) or (sep and not _NAME.fullmatch(selector)):
        raise RegistryError(f"model {spec!r}: expected {MODEL_REF_FORMS}")
    return name, selector or None


def resolve_model_ref(
    store: ArtifactStore, spec: str | None, default_name: str | None = None
) -> ModelRef:
    """``parse_model_ref`` then ``Registry.resolve``: a registered version that exists.
    No ``spec``: the champion of ``default_name``."""
    if not spec and not default_name:
        raise RegistryError(f"no model given: expected {MODEL_REF_FORMS}")
    name, selector = parse_model_ref(spec or str(default_name), default_name)
    return Registry(store, name).resolve(selector)


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True).encode()


def _actor() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"
