"""A corpus of broken inputs, each one a thing real datasets contain."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def stable_seed(*parts: object) -> int:
    """A seed from ``parts`` that is the same in every process (``hash()`` of a str is
    salted per process by PYTHONHASHSEED, so fixtures seeded with it change per run)."""
    text = "/".join(map(str, parts)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "big")


def png_bytes(w: int, h: int, seed: int, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, "PNG")
    return buf.getvalue()


def jpeg_bytes(w: int, h: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").save(buf, "JPEG")
    return buf.getvalue()


def bomb_png(w: int = 30000, h: int = 30000) -> bytes:
    """A tiny PNG whose header claims w x h pixels (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


# file (relative to the corpus root) -> the check that must name it
EXPECTED = {
    "train/cat/random-bytes.jpg": "every file decodable",
    "train/dog/truncated.png": "every file decodable",
    "train/dog/truncated.jpg": "every file decodable",
    "train/cat/zero.png": "every file decodable",
    "train/zebra/stray.png": "labels in the class set",
    "test/cat/leaked.png": "no image shared between splits (leakage)",
    "train/cat/c000.png": "no image shared between splits (leakage)",
    "train/dog/one-pixel.png": "width within bounds",
    "train/cat/bomb.png": "every file decodable",
}
CLASSES = ["bird", "cat", "dog"]  # "bird" has a folder and no images


def write_fault_corpus(root: Path, per_class: int = 6) -> Path:
    """ImageFolder with predefined splits: good images for cat and dog, then the faults."""
    for split in ("train", "val", "test"):
        for ci, label in enumerate(("cat", "dog")):
            d = root / split / label
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                (d / f"{label[0]}{i:03d}.png").write_bytes(
                    png_bytes(16, 16, seed=stable_seed(split, ci, i))
                )
        (root / split / "bird").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    (root / "train/cat/random-bytes.jpg").write_bytes(rng.bytes(2048))
    good_png = png_bytes(32, 32, seed=11)
    (root / "train/dog/truncated.png").write_bytes(good_png[: len(good_png) // 2])
    good_jpg = jpeg_bytes(64, 64, seed=12)
    (root / "train/dog/truncated.jpg").write_bytes(good_jpg[: len(good_jpg) // 2])
    (root / "train/cat/zero.png").write_bytes(b"")
    (root / "train/zebra").mkdir(parents=True, exist_ok=True)
    (root / "train/zebra/stray.png").write_bytes(png_bytes(16, 16, seed=13))
    (root / "test/cat/leaked.png").write_bytes((root / "train/cat/c000.png").read_bytes())
    (root / "train/dog/one-pixel.png").write_bytes(png_bytes(1, 1, seed=14))
    (root / "train/cat/bomb.png").write_bytes(bomb_png())
    return root
