"""The dataset manifest (Parquet) and how datasets are addressed in the store.

Layout: ``datasets/<name>/<version>/{images/..., manifest.parquet, dataset.json}``.
The manifest is written last and is the commit marker: a version without one does not
exist. ``datasets/<name>/LATEST`` is the one mutable ref, pointing at the newest version.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import pandas as pd

from visionline.errors import KeyNotFoundError
from visionline.storage import ArtifactStore

MANIFEST_COLUMNS = [
    "key",
    "source",
    "label",
    "sha256",
    "bytes",
    "width",
    "height",
    "mode",
    "format",
    "decodable",
    "error",
    "split",
]
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetRef:
    name: str
    version: str

    @property
    def prefix(self) -> str:
        return f"datasets/{self.name}/{self.version}"

    @property
    def manifest_key(self) -> str:
        return f"{self.prefix}/manifest.parquet"

    @property
    def info_key(self) -> str:
        return f"{self.prefix}/dataset.json"

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"


def latest_key(name: str) -> str:
    return f"datasets/{name}/LATEST"


def resolve_dataset(store: ArtifactStore, spec: str) -> DatasetRef:
    """``name`` (the latest version) or ``name:version`` -> a DatasetRef that exists."""
    name, _, version = spec.partition(":")
    if not version:
        if not store.exists(latest_key(name)):
            raise KeyNotFoundError(
                f"no dataset {name!r} in {store.uri}: ingest it first (visionline ingest SRC "
                f"--dataset {name})"
            )
        version = store.get_bytes(latest_key(name)).decode().strip()
    ref = DatasetRef(name, version)
    if not store.exists(ref.manifest_key):
        raise KeyNotFoundError(f"dataset {ref} has no manifest in {store.uri}")
    return ref


def manifest_to_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df[MANIFEST_COLUMNS].to_parquet(buf, index=False)
    return buf.getvalue()


def read_manifest(store: ArtifactStore, ref: DatasetRef) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(store.get_bytes(ref.manifest_key, verify=True)))
