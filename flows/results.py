"""Prefect's persisted results, kept in the pipeline's own artifact store.

Prefect would otherwise write task results under ``~/.prefect/storage`` of whatever
process runs the flow: a pod's home may be read-only, and it is gone with the pod. The
results (what makes a re-run reuse finished steps) belong next to the artifacts they
describe: ``<store>/prefect-results/<key>``, S3 or the local store alike.

The store is found from the flow run's own ``config`` parameter, so one block document
serves every config. Prefect accepts only saved blocks as result storage, so an operator
registers it once per Prefect server and points the flow-run environment at it (the
Kubernetes work pool does, through prefect.yaml's job variables):

    python -m flows.results          # saves the block, prints the setting
    PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK=visionline-pipeline-store/visionline

Without it, results stay in Prefect's local storage under PREFECT_HOME (the Makefile puts
that in .visionline/), which is right for one machine.
"""

from __future__ import annotations

import functools
from typing import Any

import anyio.to_thread
from prefect.filesystems import WritableFileSystem
from prefect.runtime import flow_run

from visionline.config import load_config
from visionline.errors import KeyNotFoundError
from visionline.storage import ArtifactStore, open_store

PREFIX = "prefect-results"
BLOCK_NAME = "visionline"


@functools.lru_cache(maxsize=8)
def _store_for(config: str, overrides_key: tuple[tuple[str, Any], ...]) -> ArtifactStore:
    cfg = load_config(config)
    if overrides_key:
        cfg = cfg.with_overrides(**dict(overrides_key))
    return open_store(cfg.store)


class PipelineStoreResults(WritableFileSystem):
    """Result storage in the artifact store named by the running flow's config."""

    _block_type_name = "Visionline Pipeline Store"

    def _store(self) -> ArtifactStore:

        params = flow_run.parameters or {}
        if "config" not in params:
            raise RuntimeError("visionline results storage needs a flow with a 'config' parameter")
        overrides = params.get("overrides") or {}
        return _store_for(str(params["config"]), tuple(sorted(overrides.items())))

    def _resolve_path(self, path: str) -> None:
        # Keys stay Prefect's own (hashes); no local base path is involved.
        return None

    def _key(self, path: str) -> str:
        return f"{PREFIX}/{str(path).lstrip('/')}"

    # Prefect calls these from sync code (with its own ``_sync`` flag) and from async code
    # (the ``a``-prefixed variants); the store client is synchronous either way.
    def read_path(self, path: str, **_: Any) -> bytes:
        try:
            return self._store().get_bytes(self._key(path))
        except KeyNotFoundError as e:
            raise ValueError(f"no Prefect result {path!r}") from e

    def write_path(self, path: str, content: bytes, **_: Any) -> str:
        self._store().put_bytes(self._key(path), content)
        return path

    async def aread_path(self, path: str) -> bytes:
        return await anyio.to_thread.run_sync(self.read_path, path)

    async def awrite_path(self, path: str, content: bytes) -> str:
        return await anyio.to_thread.run_sync(self.write_path, path, content)


SLUG = f"{PipelineStoreResults.get_block_type_slug()}/{BLOCK_NAME}"


def register() -> str:
    """Save the block document on the current Prefect server; return its slug."""
    PipelineStoreResults().save(BLOCK_NAME, overwrite=True)
    return SLUG


if __name__ == "__main__":
    slug = register()
    print(f"saved {slug}; run flows with PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK={slug}")
