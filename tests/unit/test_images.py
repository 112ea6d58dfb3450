import io

import numpy as np
import pytest
from PIL import Image

from tests.support.faults import bomb_png, jpeg_bytes, png_bytes
from tests.support.hostile import strip_png
from visionline.data.images import (
    ImageDecodeError,
    decode_image,
    inspect_image,
    resized_size,
    to_mode,
)


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


# --- the work an image may cause is bounded from its header -------------------------


def test_a_strip_is_refused_by_its_aspect_ratio_before_decoding():
    from tests.support.hostile import strip_png

    data = strip_png(1, 4_000_000)  # 7.8 KB; 16 x 64,000,000 once resized to 16 px
    assert len(data) < 10_000
    with pytest.raises(ImageDecodeError, match=r"1x4000000 has an aspect ratio of 4e\+06:1"):
        decode_image(data, max_pixels=40_000_000)
    info = inspect_image(data)  # the manifest records why, with the header's size
    assert not info.decodable and "aspect ratio" in info.error
    assert (info.width, info.height) == (1, 4_000_000)
    assert decode_image(strip_png(1, 32)).size == (1, 32)  # at the limit: accepted
    with pytest.raises(ImageDecodeError, match="over the limit of 32:1"):
        decode_image(strip_png(1, 33))


def test_the_resized_size_is_bounded_when_the_target_is_known():
    data = strip_png(10, 200)  # aspect 20: within the ratio limit
    # resizing the short edge to 100 px makes 100 x 2000 = 200,000 pixels
    assert decode_image(data, target_short_edge=100, max_resized_pixels=200_000).size == (10, 200)
    with pytest.raises(ImageDecodeError, match=r"would make 100x2000 = 200000 pixels"):
        decode_image(data, target_short_edge=100, max_resized_pixels=199_999)
    assert decode_image(data, max_resized_pixels=1_000).size == (10, 200)  # no target given


@pytest.mark.parametrize(
    "w,h,side", [(1, 33, 16), (7, 5, 8), (5, 7, 224), (640, 480, 256), (3, 97, 7)]
)
def test_resized_size_is_what_torchvision_makes(w, h, side):
    import torch
    from torchvision.transforms import v2

    out = v2.Resize(side, antialias=True)(torch.zeros(1, h, w, dtype=torch.uint8))
    assert resized_size(w, h, side) == (out.shape[2], out.shape[1])


def test_a_progressive_jpeg_with_thousands_of_scans_is_refused_before_decoding():
    from tests.support.hostile import scan_bomb_jpeg

    with pytest.raises(ImageDecodeError, match=r"JPEG with \d+ scans, over the limit of 100"):
        decode_image(scan_bomb_jpeg(1024, scans=2000))
    # a normal progressive JPEG (about 10 scans) is fine
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(buf, "JPEG", progressive=True)
    assert decode_image(buf.getvalue()).size == (64, 64)


def test_only_the_first_frame_is_decoded():
    from tests.support.hostile import animated_gif, apng, multipage_tiff

    for data, fmt in ((animated_gif(50), "GIF"), (apng(20), "PNG"), (multipage_tiff(20), "TIFF")):
        im = decode_image(data)
        assert im.format == fmt and im.tell() == 0
        first = Image.open(io.BytesIO(data))
        first.load()
        assert np.array_equal(np.asarray(im), np.asarray(first))


def test_only_the_formats_we_serve_are_opened():
    from tests.support.hostile import EPS

    assert Image.open(io.BytesIO(EPS)).format == "EPS"  # Pillow alone would open it
    with pytest.raises(ImageDecodeError, match="not a recognised image format"):
        decode_image(EPS)


def test_big_metadata_is_not_a_reason_to_refuse():
    from tests.support.hostile import jpeg_with_comments, png_with_text

    assert decode_image(png_with_text(1_000_000)).size == (16, 16)
    assert decode_image(jpeg_with_comments(1_000_000)).size == (16, 16)


def test_a_header_without_pixels_is_refused():
    with pytest.raises(ImageDecodeError):
        decode_image(bomb_png(0, 10))
