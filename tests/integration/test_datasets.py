"""ManifestDataset reads one image at a time from local disk: an S3 store through a
verified disk cache, a local store in place (no second copy)."""

from __future__ import annotations

import pytest
import torch

from tests.support.faults import png_bytes
from visionline.data.datasets import LocalCache, ManifestDataset
from visionline.data.ingest import ingest
from visionline.data.manifest import read_manifest
from visionline.data.transforms import Preprocessing, eval_transform
from visionline.errors import IntegrityError, KeyNotFoundError
from visionline.storage import LocalStore, S3Store


def test_dataset_reads_from_disk_for_both_stores(small_digits_dir, store, tmp_path):
    res = ingest(store, str(small_digits_dir), "digits", progress=False)
    manifest = read_manifest(store, res.ref)
    classes = [str(i) for i in range(10)]
    cache = LocalCache(store, tmp_path / "cache")
    pre = Preprocessing(8, 1, (0.5,), (0.5,), 1.0)
    ds = ManifestDataset(manifest, "val", classes, cache, eval_transform(pre))
    assert 0 < len(ds) < len(manifest)
    x, y = ds[0]
    assert isinstance(x, torch.Tensor) and x.shape == (1, 8, 8) and 0 <= y < 10
    cached = sorted(p for p in (tmp_path / "cache").rglob("*") if p.is_file())
    if isinstance(store, LocalStore):
        # already on local disk: read where it is, not copied
        assert cached == [] and cache.path(ds.keys[0]).is_relative_to(store.root)
        with pytest.raises(KeyNotFoundError):
            cache.path(f"{res.ref.prefix}/images/0/missing.png")
    else:
        # the warm-up downloaded exactly this split's images, each one verified
        assert len(cached) == len(ds) and all(c.stat().st_size > 0 for c in cached)


def test_cache_refuses_an_object_that_does_not_match_its_hash(s3_client, bucket, tmp_path):
    store = S3Store(f"s3://{bucket}/vl", client=s3_client)
    store.put_bytes("images/x.png", png_bytes(8, 8, seed=1))
    # overwrite the bytes behind the recorded sha256, as bit rot or a bad writer would
    store.client.put_object(
        Bucket=store.bucket,
        Key=store._k("images/x.png"),
        Body=png_bytes(8, 8, seed=2),
        Metadata={"sha256": store.sha256("images/x.png")},
    )
    with pytest.raises(IntegrityError):
        LocalCache(store, tmp_path / "cache").path("images/x.png")
    assert not (tmp_path / "cache").exists() or not any(
        p.is_file() for p in (tmp_path / "cache").rglob("*")
    )
