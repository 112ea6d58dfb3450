"""The store in ``s3://bucket/prefix``.

Single PUTs and completed multipart uploads are atomic by S3's semantics; the sha256 is
stored as object metadata. Large files go through boto3's transfer manager; throttling
and 5xx are retried by botocore's standard retry mode. The conditional writes are S3's
``If-None-Match: *`` and ``If-Match: <ETag>``.

boto3 and botocore are imported where S3 is used, not at the top: they are the optional
S3 client. Every stage (the serving worker included) imports this package, most run on
a local directory, and importing boto3 alone takes about 0.2 s.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from visionline.errors import (
    BucketNotFoundError,
    CredentialsError,
    IntegrityError,
    KeyNotFoundError,
    StoreError,
)
from visionline.storage.base import (
    ArtifactStore,
    check_key,
    join_key,
    sha256_bytes,
    sha256_file,
)

MULTIPART_THRESHOLD = 16 * 1024 * 1024


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
        return join_key(self.prefix, check_key(key))

    def browser_url(self, key: str, expires_s: int = 7 * 24 * 3600) -> str | None:
        """A presigned GET URL (SigV4 allows at most 7 days)."""
        try:
            return self.client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self._k(key)},
                ExpiresIn=min(expires_s, 7 * 24 * 3600),
            )
        except Exception as e:
            raise self._translate(e, key) from e

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

    def _conditional_put(self, key: str, data: bytes, **condition: str) -> bool:
        """PUT with an HTTP precondition; False when S3 says another writer won."""
        from botocore.exceptions import ClientError

        for _ in range(5):
            try:
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=self._k(key),
                    Body=data,
                    Metadata={"sha256": sha256_bytes(data)},
                    **condition,
                )
                return True
            except ClientError as e:
                err = e.response.get("Error", {})
                code = str(err.get("Code", ""))
                status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if code == "PreconditionFailed" or status == 412:
                    return False
                if code == "NoSuchKey" and "IfMatch" in condition:
                    return False  # deleted since it was read: the caller reads again
                if code == "ConditionalRequestConflict" or status == 409:
                    # a concurrent conditional write to this key is in flight: S3 asks us
                    # to retry, and the retry then sees its outcome
                    time.sleep(0.05 * random.random())
                    continue
                raise self._translate(e, key) from e
            except Exception as e:
                raise self._translate(e, key) from e
        return False

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self._conditional_put(key, data, IfNoneMatch="*")

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._k(key))
            return resp["Body"].read(), resp["ETag"]
        except Exception as e:
            raise self._translate(e, key) from e

    def put_if_match(self, key: str, data: bytes, token: str | None) -> bool:
        if token is None:
            return self._conditional_put(key, data, IfNoneMatch="*")
        return self._conditional_put(key, data, IfMatch=token)


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
