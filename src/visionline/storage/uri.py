"""A store or one object from the URI a user writes: ``s3://...`` or a local path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from visionline.errors import KeyNotFoundError, StoreError
from visionline.storage.base import ArtifactStore
from visionline.storage.local import LocalStore
from visionline.storage.s3 import S3Store


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
