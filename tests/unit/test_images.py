import io

import numpy as np
from PIL import Image

from tests.support.faults import bomb_png, jpeg_bytes, png_bytes
from visionline.data.images import ImageDecodeError, decode_image, inspect_image, to_mode


def test_inspect_good_png():
    info = inspect_image(png_bytes(20, 10, seed=1))
    assert (info.width, info.height, info.mode, info.format, info.decodable) == (
        20,
        10,
        "RGB",
        "PNG",
        True,
    )


def test_bad_inputs_are_described_not_raised():
    good = jpeg_bytes(64, 64, seed=2)
    cases = {
        b"": "empty file",
        b"\x00garbage" * 50: "not a recognised image",
        good[: len(good) // 2]: "truncated",
        bomb_png(): "decompression-bomb guard",
    }
    for data, message in cases.items():
        info = inspect_image(data)
        assert not info.decodable
        assert message in info.error


def test_pixel_limit_is_ours_not_global():
    data = png_bytes(100, 100, seed=3)
    assert inspect_image(data, max_pixels=10_000).decodable
    info = inspect_image(data, max_pixels=9_999)
    assert not info.decodable and "100x100" in info.error
    assert (info.width, info.height) == (100, 100)  # header still described


def test_to_mode_handles_exotic_modes():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert to_mode(rgba, 3).getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    cmyk = Image.new("CMYK", (4, 4), (0, 0, 0, 0))
    assert to_mode(cmyk, 3).mode == "RGB"
    sixteen = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    buf = io.BytesIO()
    sixteen.save(buf, "PNG")
    im = decode_image(buf.getvalue())
    assert im.mode.startswith("I")
    assert to_mode(im, 1).getpixel((0, 0)) == 255
    half = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))
    assert to_mode(half, 1).getpixel((0, 0)) == 128  # scaled, not clipped to 255


def test_decode_raises_typed_error():
    try:
        decode_image(b"")
    except ImageDecodeError as e:
        assert "0 bytes" in str(e)
    else:
        raise AssertionError("expected ImageDecodeError")
