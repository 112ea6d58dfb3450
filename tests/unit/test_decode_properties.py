"""Property-based fuzzing (hypothesis) of the request path: parse -> decode -> preprocess.

Whatever bytes arrive, the outcome is one of two: a tensor of the model's shape, or our
own typed error (RequestError / ImageDecodeError) with a message. Nothing else escapes,
and what is accepted never costs more than the limits allow. Seeds are real encodings
of every accepted format (animated and multi-page ones included), mutated byte-wise.
"""

from __future__ import annotations

import contextlib
import io
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision.transforms import v2

from tests.support.faults import bomb_png
from tests.support.hostile import animated_gif, apng, multipage_tiff
from visionline.data.images import ImageDecodeError, decode_image, resized_size
from visionline.data.transforms import Preprocessing, eval_transform
from visionline.serving.requests import RequestError, image_bytes

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure reproduces
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# small enough that a mutated header can never make a test allocate much
LIMITS = {"max_pixels": 250_000, "max_aspect_ratio": 32.0, "max_resized_pixels": 100_000}


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _seeds() -> list[bytes]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8), "RGB")
    return [
        _save(rgb, "PNG"),
        _save(rgb, "JPEG", quality=90),
        _save(rgb, "JPEG", progressive=True),
        _save(rgb, "WEBP", lossless=True),
        _save(rgb, "BMP"),
        _save(rgb.convert("P"), "GIF"),
        _save(rgb, "TIFF", compression="tiff_lzw"),
        _save(rgb.convert("RGBA"), "PNG"),
        _save(rgb.convert("CMYK"), "JPEG"),
        _save(Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257), "PNG"),
        animated_gif(4, size=8),
        apng(4, size=8),
        multipage_tiff(3, size=8),
    ]


SEEDS = _seeds()


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "duplicate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "duplicate":
            data[at:at] = data[at : at + draw(st.integers(1, 256))]
    return bytes(data)


PRE = {c: Preprocessing(16, c, (0.5,) * c, (0.25,) * c, crop_ratio=0.875) for c in (1, 3)}
TRANSFORMS = {c: eval_transform(p) for c, p in PRE.items()}


def _decode_and_preprocess(data: bytes, channels: int) -> torch.Tensor | None:
    try:
        im = decode_image(data, **LIMITS, target_short_edge=PRE[channels].resize_to)
    except ImageDecodeError as e:
        assert str(e)  # always a message
        return None
    w, h = im.size
    rw, rh = resized_size(w, h, PRE[channels].resize_to)
    assert w * h <= LIMITS["max_pixels"] and rw * rh <= LIMITS["max_resized_pixels"]
    assert max(w, h) / min(w, h) <= LIMITS["max_aspect_ratio"]
    x = TRANSFORMS[channels](im)
    assert x.shape == (channels, 16, 16) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    return x


@FUZZ
@given(mutated(), st.sampled_from([1, 3]))
def test_mutated_images_decode_to_the_model_shape_or_a_decode_error(data, channels):
    _decode_and_preprocess(data, channels)


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_never_escape_as_anything_but_a_decode_error(data):
    _decode_and_preprocess(data, 3)


def test_every_seed_is_accepted():  # the mutation test starts from images that work
    for data in SEEDS:
        assert _decode_and_preprocess(data, 3) is not None


@FUZZ
@given(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1), st.integers(1, 512))
def test_header_sizes_are_refused_by_the_first_limit_they_break(w, h, target):
    data = bomb_png(w, h)  # a real PNG header; its pixel data is 64 zero bytes
    limits = {**LIMITS, "target_short_edge": target}
    rw, rh = resized_size(w, h, target)
    if w * h > LIMITS["max_pixels"]:
        reason = "decompression-bomb guard"
    elif max(w, h) / min(w, h) > LIMITS["max_aspect_ratio"]:
        reason = "aspect ratio"
    elif rw * rh > LIMITS["max_resized_pixels"]:
        reason = "would make"
    else:
        reason = None
    try:
        decode_image(data, **limits)
    except ImageDecodeError as e:
        if reason:
            assert reason in str(e)
        else:  # within every limit: only the missing pixel data can fail it
            assert "truncated" in str(e) or "corrupt" in str(e)


@FUZZ
@given(st.integers(1, 400), st.integers(1, 400), st.integers(1, 96))
def test_the_bound_computes_the_size_torchvision_resizes_to(w, h, side):
    out = v2.Resize(side, antialias=True)(torch.zeros(1, h, w, dtype=torch.uint8))
    assert resized_size(w, h, side) == (out.shape[2], out.shape[1])


CTYPES = [
    "",
    "application/octet-stream",
    "image/png",
    "application/json",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
field_values = (
    st.binary(max_size=512)
    | st.sampled_from(SEEDS)
    | st.text(max_size=200)
    | json_values
    | st.builds(lambda d: {"data": d}, st.text(max_size=100))
)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["body", "data", "file", "image", "b64", "x"]), field_values, max_size=3
    ),
    st.sampled_from(CTYPES),
    st.dictionaries(
        st.sampled_from(["file", "data", "x"]),
        st.fixed_dictionaries({"content-type": st.sampled_from(["", "image/png"])}),
        max_size=2,
    ),
)
def test_any_request_row_gives_image_bytes_or_a_4xx(row, ctype, parts):
    headers = {"Content-Type": ctype, "Content-Length": "100", **parts}
    try:
        data = image_bytes(row, headers, max_bytes=4096)
    except RequestError as e:
        assert e.status in (400, 413, 415) and str(e)
        return
    assert isinstance(data, bytes) and len(data) <= 4096
    with contextlib.suppress(ImageDecodeError):  # decoding is the next well-defined step
        decode_image(data, **LIMITS)


@pytest.mark.parametrize("frames", [2, 300])
def test_frame_count_does_not_change_the_work(frames):
    """The answer for an animation is its first frame's, however many frames follow."""
    data = animated_gif(frames, size=8)
    first = Image.open(io.BytesIO(_save(Image.open(io.BytesIO(data)).convert("RGB"), "PNG")))
    x = _decode_and_preprocess(data, 3)
    y = TRANSFORMS[3](first)
    assert x is not None and torch.allclose(x, y, atol=1e-6)


def test_a_header_that_lies_about_its_chunk_sizes():
    good = SEEDS[0]
    # IHDR's length field says 2**31: a reader that trusts it would try to read 2 GB
    lying = good[:8] + struct.pack(">I", 2**31 - 1) + good[12:]
    with pytest.raises(ImageDecodeError):
        decode_image(lying, **LIMITS)
