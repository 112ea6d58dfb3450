"""Ingest spills its rows to disk instead of holding a DataFrame: the manifest, the
content version and dataset.json must be exactly what the definitions say, for a source
with duplicates (inside a split, across train and test, across classes), undecodable
files, several classes and a carved val split. The expected manifest is built here from
the bytes (hashlib, Pillow) and the documented rules, not by ingest's code; the spill's
batch size is made tiny so paging and Parquet row groups are exercised."""

from __future__ import annotations

import hashlib
import io
import json

import pandas as pd
import pytest
from PIL import Image

import visionline.data.spill as spill
from tests.support.faults import jpeg_bytes, png_bytes, stable_seed
from visionline.config import SplitConfig
from visionline.data.images import inspect_image
from visionline.data.ingest import ingest
from visionline.data.manifest import MANIFEST_COLUMNS, read_manifest
from visionline.storage import LocalStore

RATIOS = SplitConfig(train=0.5, val=0.3, test=0.2)
CLASSES = ["Cat", "ant", "été"]  # "Cat" sorts first: code points, not case-folded
RANK = {"train": 0, "val": 1, "test": 2}


def _source(root):
    def put(rel, data):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)

    for split, n in (("train", 6), ("test", 3)):
        for c in CLASSES:
            for i in range(n):
                put(f"{split}/{c}/{i}.png", png_bytes(6, 5, seed=stable_seed(split, c, i)))
    read = lambda rel: (root / rel).read_bytes()  # noqa: E731
    put("train/ant/dup_in_train.png", read("train/ant/1.png"))
    put("test/ant/leak.png", read("train/ant/2.png"))
    put("train/été/copy_of_ant.png", read("train/ant/2.png"))  # a third copy, earlier split
    put("test/été/leak_other_class.png", read("train/Cat/3.png"))
    put("train/Cat/zz_empty.png", b"")
    put("test/Cat/empty_too.png", b"")  # an empty file duplicates every other one
    put("train/été/junk.jpg", b"not an image")
    put("train/été/photo.jpg", jpeg_bytes(9, 7, seed=3))
    put("test/Cat/trunc.png", png_bytes(16, 16, seed=5)[:80])  # header fine, data cut
    return root


def _row(root, path):
    rel = path.relative_to(root).as_posix()
    split, label = rel.split("/")[:2]
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    row = dict(source=rel, label=label, sha256=sha, bytes=len(data), split=split)
    try:
        im = Image.open(io.BytesIO(data))
        row.update(width=im.width, height=im.height, mode=im.mode, format=im.format)
        im.load()
        row.update(decodable=True, error=None)
    except Exception:
        row.setdefault("width", None)
        row.update(decodable=False, error=inspect_image(data).error)  # its own message
    if split == "train" and int(sha[:15], 16) / 16**15 < RATIOS.val / (RATIOS.train + RATIOS.val):
        row["split"] = "val"  # carved out of train by content hash
    return row


def _expected(root, name, drop_duplicates, drop_undecodable):
    rows = [_row(root, p) for p in root.rglob("*") if p.is_file() and p.suffix != ".csv"]
    rows.sort(key=lambda r: (r["label"], r["source"]))
    dropped = {}
    if drop_undecodable:
        dropped["undecodable"] = [
            {k: r[k] for k in ("source", "label", "split", "error")}
            for r in rows
            if not r["decodable"]
        ]
        rows = [r for r in rows if r["decodable"]]
    if drop_duplicates:
        first, dups = {}, []
        for r in sorted(
            rows, key=lambda r: (r["sha256"], RANK[r["split"]], r["label"], r["source"])
        ):
            if r["sha256"] in first:
                fields = ("source", "label", "split", "sha256")
                dups.append({k: r[k] for k in fields} | {"kept": first[r["sha256"]]})
            else:
                first[r["sha256"]] = r["source"]
        dropped["duplicates"] = dups
        gone = {d["source"] for d in dups}
        rows = [r for r in rows if r["source"] not in gone]
    h = hashlib.sha256()
    h.update(json.dumps(RATIOS.model_dump(), sort_keys=True).encode())
    h.update(json.dumps(CLASSES).encode())
    for r in sorted(rows, key=lambda r: (r["source"], r["sha256"])):
        h.update("\t".join([r["source"], r["label"], r["split"], r["sha256"]]).encode() + b"\n")
    version = h.hexdigest()[:12]
    for r in rows:
        ext = {"PNG": ".png", "JPEG": ".jpg"}[r["format"]] if r["decodable"] else None
        r["key"] = (
            f"datasets/{name}/{version}/images/{r['label']}/{r['sha256'][:20]}{ext}"
            if ext
            else None
        )
    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS).astype(
        {c: "str" for c in ("key", "source", "label", "sha256", "mode", "format", "error", "split")}
        | {"bytes": "int64", "width": "float64", "height": "float64", "decodable": "bool"}
    )
    return version, frame, dropped


def _csv_listing(root):
    """The same files as a CSV, listed in reverse: the manifest's order must come from
    label and source, not from the order files were found in."""
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    lines = ["path,label,split"] + [f"{r},{r.split('/')[1]},{r.split('/')[0]}" for r in files]
    csv = root / "list.csv"
    csv.write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    return str(csv)


@pytest.mark.parametrize("kind", ["folder", "csv"])
@pytest.mark.parametrize(
    ("drop_duplicates", "drop_undecodable"),
    [(False, False), (True, False), (False, True), (True, True)],
)
def test_spilled_manifest_is_the_one_the_rules_define(
    tmp_path, monkeypatch, kind, drop_duplicates, drop_undecodable
):
    monkeypatch.setattr(spill, "BATCH", 3)  # many pages and row groups on a small source
    root = _source(tmp_path / "src")
    src = str(root) if kind == "folder" else _csv_listing(root)
    store = LocalStore(tmp_path / "store")
    res = ingest(
        store,
        src,
        "mixed",
        ratios=RATIOS,
        progress=False,
        drop_duplicates=drop_duplicates,
        drop_undecodable=drop_undecodable,
    )
    version, expected, dropped = _expected(root, "mixed", drop_duplicates, drop_undecodable)
    assert res.ref.version == version
    got = read_manifest(store, res.ref)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert {"val", "train", "test"} == set(got["split"])  # the carve moved some
    info = store.get_json(res.ref.info_key)
    assert info["dropped"] == dropped
    assert res.dropped == sum(len(v) for v in dropped.values())
    assert info["images"] == res.images == len(expected)
    assert info["undecodable"] == res.undecodable == int((~expected["decodable"]).sum())
    assert info["val_carved_from_train"] is True
    counts = {s: expected[expected["split"] == s]["label"].value_counts().to_dict() for s in RANK}
    assert info["counts"] == counts
    # each distinct decodable image stored once, under its key, with its bytes
    keys = set(expected["key"].dropna())
    assert set(store.list(res.ref.prefix + "/images/")) == keys
    for key, sha in expected.dropna(subset=["key"])[["key", "sha256"]].itertuples(index=False):
        assert store.sha256(key) == sha
    if drop_duplicates:
        assert expected["sha256"].is_unique
    if drop_duplicates:  # one copy kept, in the earliest split (the rules, spelled out)
        kept = {d["source"]: d["kept"] for d in dropped["duplicates"]}
        assert kept["test/ant/leak.png"] == kept["train/été/copy_of_ant.png"] == "train/ant/2.png"
        assert kept["test/été/leak_other_class.png"] == "train/Cat/3.png"
        assert kept["train/ant/dup_in_train.png"] == "train/ant/1.png"
        assert kept.get("test/Cat/empty_too.png") == (
            None if drop_undecodable else "train/Cat/zz_empty.png"
        )
