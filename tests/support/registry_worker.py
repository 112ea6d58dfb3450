"""Run in a separate process by the registry concurrency tests: one packager claiming
versions (importable, so ``spawn`` can find it)."""

from __future__ import annotations

from visionline.registry import Registry
from visionline.storage import open_store


def allocate_many(store_uri: str, endpoint: str | None, run_id: str, n: int) -> list[str]:
    if store_uri.startswith("s3://"):
        from visionline.storage import S3Store, make_s3_client

        store = S3Store(store_uri, client=make_s3_client(endpoint_url=endpoint))
    else:
        store = open_store(store_uri)
    reg = Registry(store, "digits")
    return [reg.allocate_version(run_id) for _ in range(n)]
