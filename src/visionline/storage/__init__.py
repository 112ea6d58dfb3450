"""ArtifactStore: one key layout over a local directory or ``s3://bucket/prefix``.

The interface and its guarantees (atomic writes, recorded sha256, conditional writes)
are in ``base``; ``local`` and ``s3`` implement them; ``open_store`` picks one by URI.
"""

from visionline.storage.base import ArtifactStore, PutItem, sha256_bytes, sha256_file
from visionline.storage.local import LocalStore
from visionline.storage.s3 import MULTIPART_THRESHOLD, S3Store, make_s3_client
from visionline.storage.uri import open_store, read_uri

__all__ = [
    "MULTIPART_THRESHOLD",
    "ArtifactStore",
    "LocalStore",
    "PutItem",
    "S3Store",
    "make_s3_client",
    "open_store",
    "read_uri",
    "sha256_bytes",
    "sha256_file",
]
