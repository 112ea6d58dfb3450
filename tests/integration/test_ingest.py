import io
import shutil

import pandas as pd
import pytest

from tests.support.faults import png_bytes, stable_seed
from visionline.config import SplitConfig
from visionline.data.ingest import ingest
from visionline.data.manifest import MANIFEST_COLUMNS, read_manifest, resolve_dataset
from visionline.errors import IngestError, KeyNotFoundError
from visionline.storage import LocalStore, S3Store


def _snapshot(store):
    return {k: store.get_bytes(k) for k in store.list("")}


def test_digits_local_and_s3_identical(digits_dir, tmp_path, s3_client, bucket):
    local = LocalStore(tmp_path / "store")
    s3 = S3Store(f"s3://{bucket}/vl", client=s3_client)
    a = ingest(local, str(digits_dir), "digits", progress=False)
    b = ingest(s3, str(digits_dir), "digits", progress=False)
    assert a.ref == b.ref and a.images == b.images == 1797 and a.undecodable == 0
    ma, mb = read_manifest(local, a.ref), read_manifest(s3, b.ref)
    assert list(ma.columns) == MANIFEST_COLUMNS
    pd.testing.assert_frame_equal(ma, mb)
    assert local.get_bytes(a.ref.manifest_key) == s3.get_bytes(b.ref.manifest_key)
    assert set(ma["split"]) == {"train", "val", "test"}
    # every class is present in every split, in roughly the configured proportions
    share = ma.groupby("label")["split"].apply(lambda s: (s == "train").mean())
    assert share.between(0.55, 0.85).all()
    # images are really there, keyed as the manifest says
    row = ma.iloc[0]
    assert local.sha256(row["key"]) == row["sha256"] == s3.sha256(row["key"])


def test_reingest_writes_nothing(small_digits_dir, store):
    first = ingest(store, str(small_digits_dir), "digits", progress=False)
    before = _snapshot(store)
    again = ingest(store, str(small_digits_dir), "digits", progress=False)
    assert again.ref == first.ref and first.created and not again.created
    assert _snapshot(store) == before
    assert resolve_dataset(store, "digits") == first.ref


def test_adding_images_never_moves_existing_ones(tmp_path):
    src = tmp_path / "src"
    for label in ("a", "b"):
        (src / label).mkdir(parents=True)
        for i in range(40):
            (src / label / f"{i}.png").write_bytes(png_bytes(8, 8, seed=stable_seed(label, i)))
    store = LocalStore(tmp_path / "store")
    v1 = ingest(store, str(src), "grow", progress=False)
    for i in range(40, 80):
        (src / "a" / f"{i}.png").write_bytes(png_bytes(8, 8, seed=10_000 + i))
    v2 = ingest(store, str(src), "grow", progress=False)
    assert v1.ref.version != v2.ref.version
    m1 = read_manifest(store, v1.ref).set_index("sha256")["split"]
    m2 = read_manifest(store, v2.ref).set_index("sha256")["split"]
    assert (m2.loc[m1.index] == m1).all()
    assert resolve_dataset(store, "grow") == v2.ref  # LATEST moved
    assert resolve_dataset(store, f"grow:{v1.ref.version}") == v1.ref  # old version still there


def test_split_ratios_are_part_of_the_version(digits_dir, tmp_path):
    store = LocalStore(tmp_path)
    a = ingest(store, str(digits_dir), "d", progress=False)
    b = ingest(
        store,
        str(digits_dir),
        "d",
        ratios=SplitConfig(train=0.8, val=0.1, test=0.1),
        progress=False,
    )
    assert a.ref.version != b.ref.version


def test_s3_prefix_source(digits_dir, tmp_path, s3_client, bucket):
    src = S3Store(f"s3://{bucket}/raw", client=s3_client)
    sub = tmp_path / "few"
    for label in ("3", "7"):
        shutil.copytree(digits_dir / label, sub / label)
    src.copy_tree_from(sub, "")
    from_s3 = ingest(
        LocalStore(tmp_path / "s1"),
        f"s3://{bucket}/raw",
        "few",
        s3_client=s3_client,
        progress=False,
    )
    from_dir = ingest(LocalStore(tmp_path / "s2"), str(sub), "few", progress=False)
    assert from_s3.ref == from_dir.ref


def test_csv_source_with_explicit_splits(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rows = ["path,label,split"]
    for i in range(6):
        (imgs / f"{i}.png").write_bytes(png_bytes(10, 10, seed=i))
        rows.append(f"imgs/{i}.png,{'x' if i % 2 else 'y'},{['train', 'val', 'test'][i % 3]}")
    csv = tmp_path / "list.csv"
    csv.write_text("\n".join(rows) + "\n")
    store = LocalStore(tmp_path / "store")
    res = ingest(store, str(csv), "csvset", progress=False)
    m = read_manifest(store, res.ref)
    assert sorted(m["source"]) == [f"imgs/{i}.png" for i in range(6)]
    assert dict(zip(m["source"], m["split"], strict=True))["imgs/4.png"] == "val"


def test_bad_csv_names_the_line(tmp_path):
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(png_bytes(8, 8, seed=1))
    csv = tmp_path / "bad.csv"
    csv.write_text("path,label,split\na.png,x,train\nb.png,y,holdout\n")
    with pytest.raises(IngestError, match=r"bad.csv:3: split 'holdout'"):
        ingest(LocalStore(tmp_path / "s"), str(csv), "bad", progress=False)
    csv.write_text("path,label\na.png,x\nmissing.png,y\n")
    with pytest.raises(IngestError, match=r"bad.csv:3: file not found: .*missing.png"):
        ingest(LocalStore(tmp_path / "s"), str(csv), "bad", progress=False)
    (tmp_path / "nohdr.csv").write_text("file,class\n")
    with pytest.raises(IngestError, match="'path' and 'label'"):
        ingest(LocalStore(tmp_path / "s"), str(tmp_path / "nohdr.csv"), "bad", progress=False)


def test_undecodable_files_are_recorded_not_fatal(tmp_path):
    src = tmp_path / "src" / "only"
    src.mkdir(parents=True)
    (src / "ok.png").write_bytes(png_bytes(8, 8, seed=1))
    (src / "junk.jpg").write_bytes(b"not an image at all")
    store = LocalStore(tmp_path / "store")
    res = ingest(store, str(tmp_path / "src"), "mixed", progress=False)
    m = read_manifest(store, res.ref).set_index("source")
    assert res.undecodable == 1
    assert not m.loc["only/junk.jpg", "decodable"]
    assert "not a recognised image" in m.loc["only/junk.jpg", "error"]
    assert m.loc["only/ok.png", "decodable"]
    # refused, so not copied: the store holds the one image and the dataset's own files
    assert pd.isna(m.loc["only/junk.jpg", "key"])
    assert set(store.list(res.ref.prefix + "/")) == {
        m.loc["only/ok.png", "key"],
        res.ref.manifest_key,
        res.ref.info_key,
    }


def test_missing_source_and_dataset_are_clear(tmp_path):
    with pytest.raises(IngestError, match="not found"):
        ingest(LocalStore(tmp_path), str(tmp_path / "nowhere"), "x", progress=False)
    with pytest.raises(KeyNotFoundError, match="ingest it first"):
        resolve_dataset(LocalStore(tmp_path), "never")


def test_manifest_is_parquet_readable_by_pandas(digits_dir, tmp_path):
    store = LocalStore(tmp_path)
    res = ingest(store, str(digits_dir), "digits", progress=False)
    df = pd.read_parquet(io.BytesIO(store.get_bytes(res.ref.manifest_key)))
    assert df["key"].str.startswith(f"datasets/digits/{res.ref.version}/images/").all()
