"""Ingest as an attacker or a careless user would drive it: files from outside the
source, hostile labels, and a store that fails midway. Nothing may be copied that
should not be, and a failed ingest leaves the store exactly as it was."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.support.faults import png_bytes, stable_seed
from tests.support.s3 import FaultProxy
from visionline.data.ingest import ingest
from visionline.data.manifest import read_manifest
from visionline.errors import IngestError
from visionline.storage import ArtifactStore, LocalStore, S3Store, make_s3_client

PASSWD = Path("/etc/passwd")


def snapshot(store: ArtifactStore) -> dict[str, object]:
    """Everything the store holds, below the ArtifactStore interface: every file and
    folder of a local store (sha256 sidecars included), every object of the bucket
    with its metadata."""
    if isinstance(store, LocalStore):
        if not store.root.exists():
            return {}
        return {
            p.relative_to(store.root).as_posix(): p.read_bytes() if p.is_file() else None
            for p in sorted(store.root.rglob("*"))
        }
    out: dict[str, object] = {}
    pages = store.client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket)
    for page in pages:
        for obj in page.get("Contents", []):
            got = store.client.get_object(Bucket=store.bucket, Key=obj["Key"])
            out[obj["Key"]] = (got["Body"].read(), got.get("Metadata"))
    return out


def image_folder(root: Path, classes: tuple[str, ...] = ("a", "b"), per_class: int = 6) -> Path:
    for label in classes:
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            seed = stable_seed(root.name, label, i)
            (root / label / f"{i}.png").write_bytes(png_bytes(8, 8, seed=seed))
    return root


def csv_beside_images(folder: Path, extra_rows: list[str]) -> Path:
    """list.csv in ``folder`` naming two real images there, then ``extra_rows``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(2):
        (folder / f"{i}.png").write_bytes(png_bytes(8, 8, seed=stable_seed("csv", i)))
    csv = folder / "list.csv"
    csv.write_text("\n".join(["path,label", "0.png,x", "1.png,y", *extra_rows]) + "\n")
    return csv


@pytest.fixture
def populated(store, tmp_path) -> ArtifactStore:
    """A store that already holds a dataset: what a failed ingest must not disturb."""
    ingest(store, str(image_folder(tmp_path / "existing")), "existing", progress=False)
    return store


def test_csv_listing_etc_passwd_is_refused_before_anything_is_written(populated, tmp_path):
    before = snapshot(populated)
    csv = csv_beside_images(tmp_path / "src", [f"{PASSWD},x"])
    with pytest.raises(IngestError, match=r"list.csv:4: /etc/passwd is outside the CSV's folder"):
        ingest(populated, str(csv), "grab", progress=False)
    assert snapshot(populated) == before


def test_allowed_outside_file_that_is_no_image_is_recorded_not_copied(populated, tmp_path):
    before = snapshot(populated)
    csv = csv_beside_images(tmp_path / "src", [f"{PASSWD},x"])
    res = ingest(populated, str(csv), "grab", progress=False, allow_outside=["/etc"])
    m = read_manifest(populated, res.ref).set_index("source")
    row = m.loc[str(PASSWD)]
    assert not row["decodable"] and pd.isna(row["key"])
    assert "not a recognised image format" in row["error"]
    assert res.undecodable == 1 and res.images == 3
    # the two images and the dataset's own files were written; no copy of the refused file
    after = snapshot(populated)
    new = {k: v for k, v in after.items() if k not in before}
    secret = PASSWD.read_bytes()
    contents = [v[0] if isinstance(v, tuple) else v for v in new.values()]
    assert all(secret not in c for c in contents if c is not None)
    objects = set(populated.list(res.ref.prefix + "/"))
    assert objects == set(m["key"].dropna()) | {res.ref.manifest_key, res.ref.info_key}


def test_symlink_that_escapes_counts_as_outside(populated, tmp_path):
    before = snapshot(populated)
    folder = image_folder(tmp_path / "src")
    (folder / "a" / "innocent.png").symlink_to(PASSWD)
    with pytest.raises(IngestError, match=r"innocent.png: /etc/passwd is outside"):
        ingest(populated, str(folder), "links", progress=False)
    csv = csv_beside_images(tmp_path / "csvsrc", ["alias.png,x"])
    (csv.parent / "alias.png").symlink_to(PASSWD)
    with pytest.raises(IngestError, match=r"list.csv:4: /etc/passwd is outside"):
        ingest(populated, str(csv), "links", progress=False)
    assert snapshot(populated) == before
    # a link that stays inside the source is an ordinary file
    (folder / "a" / "innocent.png").unlink()
    (folder / "a" / "same.png").symlink_to(folder / "b" / "0.png")
    res = ingest(populated, str(folder), "links", progress=False)
    assert "a/same.png" in set(read_manifest(populated, res.ref)["source"])


def test_relative_paths_may_not_climb_out_of_the_csv_folder(tmp_path):
    (tmp_path / "outside.png").write_bytes(png_bytes(8, 8, seed=3))
    csv = csv_beside_images(tmp_path / "src", ["../outside.png,x"])
    store = LocalStore(tmp_path / "store")
    with pytest.raises(IngestError, match=r"list.csv:4: .*outside.png is outside"):
        ingest(store, str(csv), "climb", progress=False)
    assert snapshot(store) == {}
    res = ingest(store, str(csv), "climb", progress=False, allow_outside=[tmp_path])
    assert res.images == 3 and res.undecodable == 0


def test_s3_paths_in_a_csv_need_their_prefix_allowed(tmp_path, s3_client, bucket):
    src = S3Store(f"s3://{bucket}", client=s3_client)
    src.put_bytes("raw/cats/c.png", png_bytes(8, 8, seed=5))
    src.put_bytes("private/key.png", png_bytes(8, 8, seed=6))
    csv = csv_beside_images(tmp_path / "src", [f"s3://{bucket}/raw/cats/c.png,x"])
    store = LocalStore(tmp_path / "store")
    with pytest.raises(IngestError, match=rf"list.csv:4: s3://{bucket}/raw/cats/c.png is outside"):
        ingest(store, str(csv), "mixed", s3_client=s3_client, progress=False)
    # a prefix is a folder, not a string prefix: s3://b/ra does not allow s3://b/raw/...
    with pytest.raises(IngestError, match="is outside"):
        ingest(
            store,
            str(csv),
            "mixed",
            s3_client=s3_client,
            progress=False,
            allow_outside=[f"s3://{bucket}/ra"],
        )
    res = ingest(
        store,
        str(csv),
        "mixed",
        s3_client=s3_client,
        progress=False,
        allow_outside=[f"s3://{bucket}/raw"],
    )
    assert res.images == 3
    csv.write_text(f"path,label\ns3://{bucket}/raw/../private/key.png,x\n")
    with pytest.raises(IngestError, match="not a usable s3://bucket/key"):
        ingest(
            store,
            str(csv),
            "mixed",
            s3_client=s3_client,
            progress=False,
            allow_outside=[f"s3://{bucket}/raw"],
        )


def test_label_that_climbs_out_fails_before_anything_is_written(populated, tmp_path):
    before = snapshot(populated)
    csv = csv_beside_images(tmp_path / "src", ["0.png,../../escape"])
    with pytest.raises(
        IngestError, match=r"list.csv:4: label '\.\./\.\./escape' contains a path separator"
    ):
        ingest(populated, str(csv), "escape", progress=False)
    assert snapshot(populated) == before


@pytest.mark.parametrize(
    ("label", "why"),
    [
        ("a/b", "path separator"),
        ("..", "contains '..'"),
        ("a\\b", "path separator"),
        (".hidden", "starts with '.'"),
        ("bell\x07", "control"),
        ("rtl\u202eevil", "invisible"),
    ],
)
def test_bad_labels_name_the_csv_line(tmp_path, label, why):
    csv = csv_beside_images(tmp_path / "src", [f'1.png,"{label}"'])
    store = LocalStore(tmp_path / "store")
    with pytest.raises(IngestError, match=rf"list.csv:4: label .* {why}"):
        ingest(store, str(csv), "labels", progress=False)
    assert snapshot(store) == {}


def test_bad_folder_label_names_the_folder(tmp_path):
    folder = image_folder(tmp_path / "src")
    (folder / "a").rename(folder / "tab\there")
    store = LocalStore(tmp_path / "store")
    with pytest.raises(IngestError, match=r"src/tab\there/0.png: label .* control"):
        ingest(store, str(folder), "labels", progress=False)
    with pytest.raises(IngestError, match=r"dataset name '../up' contains"):
        ingest(store, str(image_folder(tmp_path / "ok")), "../up", progress=False)
    assert snapshot(store) == {}


@pytest.mark.parametrize("fail_after", [3, "commit"])
def test_upload_failure_midway_leaves_no_orphans(
    fail_after, tmp_path, moto_server, s3_client, bucket
):
    folder = image_folder(tmp_path / "src", per_class=8)
    # The keys this content will get, from an ingest into a scratch store.
    ref_run = ingest(LocalStore(tmp_path / "ref"), str(folder), "ds", progress=False)
    keys = read_manifest(LocalStore(tmp_path / "ref"), ref_run.ref)["key"].tolist()

    direct = S3Store(f"s3://{bucket}/vl", client=s3_client)
    ingest(direct, str(image_folder(tmp_path / "other")), "other", progress=False)
    # Two of this version's objects are already there (an interrupted earlier ingest):
    # content-addressed, so reused, and never deleted by this ingest's clean-up.
    for k in keys[:2]:
        direct.put_bytes(k, LocalStore(tmp_path / "ref").get_bytes(k))
    before = snapshot(direct)

    uploads = len(keys) - 2
    # "commit": every image and dataset.json land, then the manifest PUT fails.
    allowed = uploads + 1 if fail_after == "commit" else fail_after
    with FaultProxy(
        moto_server,
        fail_first=0,
        fail_after=allowed,
        methods=("PUT",),
        status=403,
        code="AccessDenied",
    ) as proxy:
        far = S3Store(f"s3://{bucket}/vl", client=make_s3_client(endpoint_url=proxy.url))
        with pytest.raises(IngestError, match=r"failed: .*Removed the (\d+) objects") as err:
            ingest(far, str(folder), "ds", progress=False, workers=4)
        assert proxy.failed >= 1, err.value
    removed = int(re.search(r"Removed the (\d+)", str(err.value)).group(1))
    # what had landed, plus the write that failed (its answer could have been lost)
    assert removed == allowed + 1 if fail_after == "commit" else removed >= allowed + 1
    assert snapshot(direct) == before


class DiskFullStore(LocalStore):
    """A local store whose disk fills up on the given write calls (1-based)."""

    def __init__(self, root: Path, fail_calls: set[int]) -> None:
        super().__init__(root)
        self.fail_calls = fail_calls
        self.calls = 0

    def put_bytes(self, key: str, data: bytes) -> str:
        self.calls += 1
        if self.calls in self.fail_calls:
            raise OSError(28, "No space left on device", key)
        return super().put_bytes(key, data)


def files_only(snap: dict[str, object]) -> dict[str, object]:
    # LocalStore.delete removes files, not the folders they were in; empty folders
    # hold no object (the store lists files only).
    return {k: v for k, v in snap.items() if v is not None}


@pytest.mark.parametrize("when", ["midway", "commit", "latest"])
def test_upload_failure_on_a_local_store_leaves_no_orphans(when, tmp_path):
    folder = image_folder(tmp_path / "src", per_class=8)
    store = DiskFullStore(tmp_path / "store", set())
    ingest(store, str(image_folder(tmp_path / "other")), "other", progress=False)
    # an older version of the same dataset, so LATEST has something to go back to
    old = ingest(store, str(image_folder(tmp_path / "src-v1", per_class=3)), "ds", progress=False)
    before = snapshot(store)
    uploads = 16
    store.calls = 0
    store.fail_calls = {{"midway": 5, "commit": uploads + 2, "latest": uploads + 3}[when]}
    with pytest.raises(IngestError, match=r"No space left on device.*Removed the \d+ objects") as e:
        ingest(store, str(folder), "ds", progress=False, workers=4)
    removed = int(re.search(r"Removed the (\d+)", str(e.value)).group(1))
    # what had landed (some images; all and dataset.json; those and the manifest), plus
    # the write that failed: its answer could have been lost after it landed
    expected = {"midway": 5, "commit": uploads + 2, "latest": uploads + 2}[when]
    assert removed == expected if when != "midway" else removed >= expected
    assert files_only(snapshot(store)) == files_only(before)
    assert store.get_bytes("datasets/ds/LATEST").decode() == old.ref.version


def test_cli_refuses_outside_files_unless_allowed(tmp_path, s3_client, bucket):
    S3Store(f"s3://{bucket}", client=s3_client).put_bytes(
        "raw/c.png", png_bytes(8, 8, seed=stable_seed("cli", 1))
    )
    csv = csv_beside_images(tmp_path / "src", [f"{PASSWD},x", f"s3://{bucket}/raw/c.png,y"])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"store: {tmp_path / 'store'}\ndata: {{dataset: grab}}\n")

    def run(*args: str) -> subprocess.CompletedProcess:
        # the moto_server fixture put AWS_ENDPOINT_URL in the environment it inherits
        return subprocess.run(
            [sys.executable, "-m", "visionline.cli", "--config", str(cfg), *args],
            capture_output=True,
            text=True,
        )

    refused = run("ingest", str(csv), "--dataset", "grab", "--allow-outside", "/etc")
    assert refused.returncode == 2
    assert f"s3://{bucket}/raw/c.png is outside" in refused.stderr
    assert f"--allow-outside s3://{bucket}/raw" in refused.stderr  # says how to allow it
    assert not (tmp_path / "store").exists()
    ok = run(
        "ingest",
        str(csv),
        "--dataset",
        "grab",
        "--allow-outside",
        "/etc",
        "--allow-outside",
        f"s3://{bucket}/raw",
    )
    assert ok.returncode == 0, ok.stderr
    assert "4 files, 1 refused" in ok.stdout
