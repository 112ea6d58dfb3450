"""The store in a local directory.

Data is written to a temp file in the same directory and ``os.replace``-d into place;
the sha256 lives in a sidecar under ``.sha256/`` (never listed). The conditional writes
use ``os.link`` (which refuses an existing name) and a compare-and-rename made atomic
by a short ``flock`` on the key (POSIX has no compare-and-rename of its own).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from visionline.errors import IntegrityError, KeyNotFoundError, StoreError
from visionline.storage.base import (
    CHUNK_BYTES,
    ArtifactStore,
    check_key,
    sha256_bytes,
    sha256_file,
)


class LocalStore(ArtifactStore):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _sidecar(self, key: str) -> Path:
        return self.root / ".sha256" / check_key(key)

    @staticmethod
    def _atomic_write(dest: Path, write: Callable[[Any], None]) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            # rename is atomic: readers see the old file or the whole new one.
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _commit(self, key: str, write: Callable[[Any], None], digest: str) -> str:
        # Sidecar first: a crash between the two leaves a sidecar without data, which
        # readers ignore (exists() looks at the data file), never data without a hash.
        self._atomic_write(self._sidecar(key), lambda f: f.write(digest.encode()))
        self._atomic_write(self._path(key), write)
        return digest

    def put_bytes(self, key: str, data: bytes) -> str:
        return self._commit(key, lambda f: f.write(data), sha256_bytes(data))

    def put_file(self, key: str, path: str | Path) -> str:
        src = Path(path)
        if not src.is_file():
            raise StoreError(f"cannot upload {src}: not a file")

        def write(f: Any) -> None:
            with open(src, "rb") as s:
                shutil.copyfileobj(s, f, CHUNK_BYTES)

        return self._commit(key, write, sha256_file(src))

    def _require(self, key: str) -> Path:
        p = self._path(key)
        if not p.is_file():
            raise KeyNotFoundError(f"no object {key!r} in store {self.uri}")
        return p

    def _verify(self, key: str, actual: str) -> None:
        expected = self.sha256(key)
        if expected is not None and expected != actual:
            raise IntegrityError(
                f"{self.url(key)} is corrupt: sha256 {actual} != recorded {expected}"
            )

    def get_bytes(self, key: str, verify: bool = False) -> bytes:
        data = self._require(key).read_bytes()
        if verify:
            self._verify(key, sha256_bytes(data))
        return data

    def get_file(self, key: str, dest: str | Path, verify: bool = False) -> Path:
        src = self._require(key)
        dest = Path(dest)
        self._atomic_write(dest, lambda f: f.write(src.read_bytes()))
        if verify:
            self._verify(key, sha256_file(dest))
        return dest

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> Iterator[str]:
        if not self.root.is_dir():
            return iter(())
        base = self.root
        # Walk only the deepest folder the prefix names, then filter by key prefix.
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = base / folder if folder else base
        keys = []
        if start.is_dir():
            for p in start.rglob("*"):
                if not p.is_file():
                    continue
                rel = p.relative_to(base).as_posix()
                if rel.startswith((".sha256/", ".locks/")) or p.name.endswith(".tmp"):
                    continue
                if rel.startswith(prefix):
                    keys.append(rel)
        return iter(sorted(keys))

    def sha256(self, key: str) -> str | None:
        self._require(key)  # like S3: a missing object is an error, not "no hash"
        side = self._sidecar(key)
        return side.read_text().strip() if side.is_file() else None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
        self._sidecar(key).unlink(missing_ok=True)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                # link() fails if the name exists: the filesystem picks exactly one winner,
                # and the winner's file appears complete.
                os.link(tmp, dest)
            except FileExistsError:
                return False
        finally:
            Path(tmp).unlink(missing_ok=True)
        # Only the winner records the hash (a loser must not overwrite it).
        self._atomic_write(self._sidecar(key), lambda f: f.write(sha256_bytes(data).encode()))
        return True

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        data = self._require(key).read_bytes()
        return data, sha256_bytes(data)

    @contextlib.contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        lock = self.root / ".locks" / f"{check_key(key)}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def put_if_match(self, key: str, data: bytes, token: str | None) -> bool:
        with self._key_lock(key):
            path = self._path(key)
            current = sha256_bytes(path.read_bytes()) if path.is_file() else None
            if current != token:
                return False
            self.put_bytes(key, data)
            return True
