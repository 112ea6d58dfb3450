"""ArtifactStore: one key layout over a local directory or ``s3://bucket/prefix``.

Keys are ``/``-separated relative paths (``datasets/digits/ab12/manifest.parquet``).
Every write is atomic (a reader sees the old object or the whole new one, never a
part) and records the object's sha256, which reads can verify.

- Local: data is written to a temp file in the same directory and ``os.replace``-d
  into place; the sha256 lives in a sidecar under ``.sha256/`` (never listed).
- S3: single PUTs and completed multipart uploads are atomic by S3's semantics; the
  sha256 is stored as object metadata. Large files go through boto3's transfer
  manager; throttling and 5xx are retried by botocore's standard retry mode.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from visionline.errors import (
    BucketNotFoundError,
    CredentialsError,
    IntegrityError,
    KeyNotFoundError,
    StoreError,
)

_CHUNK = 1024 * 1024
MULTIPART_THRESHOLD = 16 * 1024 * 1024


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _check_key(key: str) -> str:
    p = PurePosixPath(key)
    if not key or p.is_absolute() or ".." in p.parts or key.endswith("/"):
        raise StoreError(f"invalid store key {key!r}: must be a relative path without '..'")
    if p.parts[0] == ".sha256":
        raise StoreError(f"invalid store key {key!r}: '.sha256/' is reserved")
    return str(p)


def _join(prefix: str, rel: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/{rel}" if prefix else rel


@dataclass(frozen=True)
class PutItem:
    """One object to upload in a batch: either ``data`` or ``path`` is set."""

    key: str
    data: bytes | None = None
    path: str | Path | None = None


class ArtifactStore(ABC):
    """Common interface; see the module docstring for the guarantees."""

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

    # -- conveniences shared by both backends -----------------------------------------
    def url(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{_check_key(key)}"

    def put_json(self, key: str, obj: Any) -> str:
        return self.put_bytes(key, json.dumps(obj, indent=2, sort_keys=True).encode())

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

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
            PutItem(key=_join(prefix, p.relative_to(root).as_posix()), path=p)
            for p in sorted(root.rglob("*"))
            if p.is_file()
        ]
        return list(self.put_many(items, workers=workers))


class LocalStore(ArtifactStore):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def _sidecar(self, key: str) -> Path:
        return self.root / ".sha256" / _check_key(key)

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
                shutil.copyfileobj(s, f, _CHUNK)

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
                if rel.startswith(".sha256/") or p.name.endswith(".tmp"):
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


class S3Store(ArtifactStore):
    """``s3://bucket/prefix`` through a boto3 client the caller may supply."""

    def __init__(self, uri: str, client: Any | None = None, max_pool: int = 32) -> None:
        if not uri.startswith("s3://"):
            raise StoreError(f"not an s3:// URI: {uri}")
        bucket, _, prefix = uri[5:].partition("/")
        if not bucket:
            raise StoreError(f"no bucket in {uri}")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self.client = client if client is not None else make_s3_client(max_pool=max_pool)

    def _k(self, key: str) -> str:
        return _join(self.prefix, _check_key(key))

    def _translate(self, e: Exception, key: str | None = None) -> StoreError:
        if isinstance(e, StoreError):
            return e
        from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

        if isinstance(e, NoCredentialsError | PartialCredentialsError):
            return CredentialsError(
                f"no AWS credentials for {self.uri}: set AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY or AWS_PROFILE (and AWS_ENDPOINT_URL for an "
                "S3-compatible server)"
            )
        if isinstance(e, ClientError):
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code == "NoSuchBucket":
                return BucketNotFoundError(
                    f"bucket {self.bucket!r} does not exist: create it "
                    f"(aws s3 mb s3://{self.bucket}) or fix the store URI"
                )
            if code in ("NoSuchKey", "404", "NotFound") and key is not None:
                return KeyNotFoundError(f"no object {key!r} in store {self.uri}")
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
                return CredentialsError(
                    f"access to {self.uri} refused ({code}): check the AWS credentials "
                    "and the bucket policy"
                )
        return StoreError(f"S3 error on {self.uri} ({key or ''}): {e}")

    def put_bytes(self, key: str, data: bytes) -> str:
        digest = sha256_bytes(data)
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self._k(key), Body=data, Metadata={"sha256": digest}
            )
        except Exception as e:
            raise self._translate(e, key) from e
        return digest

    def put_file(self, key: str, path: str | Path) -> str:
        from boto3.s3.transfer import TransferConfig

        src = Path(path)
        if not src.is_file():
            raise StoreError(f"cannot upload {src}: not a file")
        digest = sha256_file(src)
        try:
            if src.stat().st_size < MULTIPART_THRESHOLD:
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=self._k(key),
                    Body=src.read_bytes(),
                    Metadata={"sha256": digest},
                )
            else:
                self.client.upload_file(
                    str(src),
                    self.bucket,
                    self._k(key),
                    ExtraArgs={"Metadata": {"sha256": digest}},
                    Config=TransferConfig(
                        multipart_threshold=MULTIPART_THRESHOLD,
                        multipart_chunksize=MULTIPART_THRESHOLD,
                    ),
                )
        except Exception as e:
            raise self._translate(e, key) from e
        return digest

    def get_bytes(self, key: str, verify: bool = False) -> bytes:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._k(key))
            data = resp["Body"].read()
        except Exception as e:
            raise self._translate(e, key) from e
        if verify:
            expected = resp.get("Metadata", {}).get("sha256")
            actual = sha256_bytes(data)
            if expected and expected != actual:
                raise IntegrityError(
                    f"{self.url(key)} is corrupt: sha256 {actual} != recorded {expected}"
                )
        return data

    def get_file(self, key: str, dest: str | Path, verify: bool = False) -> Path:
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        os.close(fd)
        try:
            self.client.download_file(self.bucket, self._k(key), tmp)
            if verify:
                expected = self.sha256(key)
                actual = sha256_file(tmp)
                if expected and expected != actual:
                    raise IntegrityError(
                        f"{self.url(key)} is corrupt: sha256 {actual} != recorded {expected}"
                    )
            os.replace(tmp, dest)
        except StoreError:
            Path(tmp).unlink(missing_ok=True)
            raise
        except Exception as e:
            Path(tmp).unlink(missing_ok=True)
            raise self._translate(e, key) from e
        return dest

    def _head(self, key: str) -> dict | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._k(key))
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                # HEAD cannot say NoSuchBucket; ask once so a wrong bucket is not
                # silently reported as "object absent".
                try:
                    self.client.head_bucket(Bucket=self.bucket)
                except ClientError as be:
                    status = str(be.response.get("Error", {}).get("Code", ""))
                    if status in ("404", "NoSuchBucket", "NotFound"):
                        raise BucketNotFoundError(
                            f"bucket {self.bucket!r} does not exist: create it or fix the store URI"
                        ) from be
                    if status in ("403", "AccessDenied", "Forbidden"):
                        raise CredentialsError(
                            f"access to bucket {self.bucket!r} is denied (403): the bucket "
                            "exists but these credentials may not use it; check the IAM "
                            "policy or the credentials in use"
                        ) from be
                    raise self._translate(be, key) from be
                except Exception as be:
                    raise self._translate(be, key) from be
                return None
            raise self._translate(e, key) from e
        except Exception as e:
            raise self._translate(e, key) from e

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def sha256(self, key: str) -> str | None:
        head = self._head(key)
        if head is None:
            raise KeyNotFoundError(f"no object {key!r} in store {self.uri}")
        return head.get("Metadata", {}).get("sha256")

    def list(self, prefix: str = "") -> Iterator[str]:
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full
            )
            for page in pages:
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        except Exception as e:
            raise self._translate(e) from e
        return iter(sorted(keys))

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._k(key))
        except Exception as e:
            raise self._translate(e, key) from e


def make_s3_client(max_pool: int = 32, endpoint_url: str | None = None) -> Any:
    """A boto3 S3 client from the standard AWS environment.

    ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` (honoured by botocore itself) point
    it at an S3-compatible server. ``standard`` retry mode retries throttling and 5xx
    with exponential backoff and jitter.
    """
    import boto3
    from botocore.config import Config

    cfg = Config(
        retries={"mode": "standard", "max_attempts": 8},
        max_pool_connections=max_pool,
        connect_timeout=10,
        read_timeout=60,
    )
    return boto3.session.Session().client("s3", config=cfg, endpoint_url=endpoint_url)


def open_store(uri: str | Path, s3_client: Any | None = None) -> ArtifactStore:
    """``s3://bucket/prefix`` or a local directory (created on first write)."""
    uri = str(uri)
    if uri.startswith("s3://"):
        return S3Store(uri, client=s3_client)
    if "://" in uri and not uri.startswith("file://"):
        raise StoreError(f"unsupported store URI {uri!r}: use s3://bucket/prefix or a path")
    return LocalStore(uri.removeprefix("file://"))


def read_uri(uri: str, s3_client: Any | None = None) -> bytes:
    """Read one object given as ``s3://bucket/key`` or a local path."""
    if uri.startswith("s3://"):
        bucket, _, key = uri[5:].partition("/")
        return S3Store(f"s3://{bucket}", client=s3_client).get_bytes(key)
    path = Path(uri)
    if not path.is_file():
        raise KeyNotFoundError(f"file not found: {uri}")
    return path.read_bytes()
