"""The ArtifactStore interface and what every backend shares.

Keys are ``/``-separated relative paths (``datasets/digits/ab12/manifest.parquet``).
Every write is atomic (a reader sees the old object or the whole new one, never a
part) and records the object's sha256, which reads can verify.

Two writers racing on one key (two packagers allocating a model version, two promotions
moving an alias) use the conditional writes: ``put_if_absent`` (of concurrent callers
exactly one creates the object) and ``put_if_match`` (replace only the version read
before), with ``update_json`` as the optimistic read-modify-write loop on top. Each
backend's module says how it keeps these promises.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from visionline.errors import KeyNotFoundError, StoreError

CHUNK_BYTES = 1024 * 1024


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def check_key(key: str) -> str:
    p = PurePosixPath(key)
    if not key or p.is_absolute() or ".." in p.parts or key.endswith("/"):
        raise StoreError(f"invalid store key {key!r}: must be a relative path without '..'")
    if p.parts[0] == ".sha256":
        raise StoreError(f"invalid store key {key!r}: '.sha256/' is reserved")
    return str(p)


def join_key(prefix: str, rel: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/{rel}" if prefix else rel


@dataclass(frozen=True)
class PutItem:
    """One object to upload in a batch: either ``data`` or ``path`` is set."""

    key: str
    data: bytes | None = None
    path: str | Path | None = None


class ArtifactStore(ABC):
    """Common interface; see this module's docstring for the guarantees."""

    uri: str

    # -- primitives each backend implements -------------------------------------------
    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> str:
        """Write ``data`` atomically under ``key``; return its sha256."""

    @abstractmethod
    def put_file(self, key: str, path: str | Path) -> str:
        """Upload a local file atomically under ``key``; return its sha256."""

    @abstractmethod
    def get_bytes(self, key: str, verify: bool = False) -> bytes: ...

    @abstractmethod
    def get_file(self, key: str, dest: str | Path, verify: bool = False) -> Path: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix`` (a key prefix, not only a folder), sorted."""

    @abstractmethod
    def sha256(self, key: str) -> str | None:
        """The sha256 recorded when ``key`` was written (None if none was recorded);
        KeyNotFoundError when there is no such object."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create ``key`` with ``data`` unless an object is already there: True when this
        call created it. Of concurrent callers on one key, exactly one gets True."""

    @abstractmethod
    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """The object and a token naming this version of it, for ``put_if_match``."""

    @abstractmethod
    def put_if_match(self, key: str, data: bytes, token: str | None) -> bool:
        """Replace ``key`` only if it is still the version ``token`` names (None: only if
        there is no object): True when written, False when another writer came first."""

    # -- conveniences shared by both backends -----------------------------------------
    def url(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{check_key(key)}"

    def browser_url(self, key: str, expires_s: int = 7 * 24 * 3600) -> str | None:
        """A URL a web browser can open for ``key`` (S3: presigned), or None when there is
        none (a local directory: a browser page will not follow file:// links)."""
        return None

    def put_json(self, key: str, obj: Any) -> str:
        return self.put_bytes(key, json.dumps(obj, indent=2, sort_keys=True).encode())

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def update_json(self, key: str, change: Callable[[Any | None], Any], attempts: int = 50) -> Any:
        """Read-modify-write of one JSON object that concurrent writers cannot interleave:
        ``change(current or None)`` gives the new value, written only if nobody wrote in
        between, else read again and retried. Returns the value written (or kept)."""
        for attempt in range(attempts):
            try:
                data, token = self.get_versioned(key)
                current: Any | None = json.loads(data)
            except KeyNotFoundError:
                current, token = None, None
            new = change(current)
            if new == current:
                return current
            if self.put_if_match(key, json.dumps(new, indent=2, sort_keys=True).encode(), token):
                return new
            # another writer won this round: back off a little, with jitter, and retry
            time.sleep(min(0.5, 0.005 * 2**attempt) * random.random())
        raise StoreError(
            f"{self.url(key)}: {attempts} concurrent updates in a row won over ours; try again"
        )

    def put_many(
        self,
        items: Iterable[PutItem],
        workers: int = 16,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, str]:
        """Upload many objects in parallel; return key -> sha256.

        boto3 clients are thread-safe, and many small PUTs are latency-bound, so a
        thread pool turns round trips into throughput.
        """

        def one(item: PutItem) -> tuple[str, str]:
            if item.data is not None:
                digest = self.put_bytes(item.key, item.data)
            elif item.path is not None:
                digest = self.put_file(item.key, item.path)
            else:
                raise StoreError(f"nothing to upload for {item.key!r}")
            return item.key, digest

        out: dict[str, str] = {}
        items = list(items)
        if workers <= 1:
            for item in items:
                k, d = one(item)
                out[k] = d
                if progress:
                    progress(1)
            return out
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for k, d in pool.map(one, items):
                out[k] = d
                if progress:
                    progress(1)
        return out

    def copy_tree_from(self, local_dir: str | Path, prefix: str, workers: int = 8) -> list[str]:
        """Upload every file below ``local_dir`` to ``prefix/<relative path>``."""
        root = Path(local_dir)
        items = [
            PutItem(key=join_key(prefix, p.relative_to(root).as_posix()), path=p)
            for p in sorted(root.rglob("*"))
            if p.is_file()
        ]
        return list(self.put_many(items, workers=workers))
