"""Decoding and inspecting image bytes, safely.

Shared by ingestion (inspect), training (decode) and the TorchServe handler (decode),
so every path refuses the same bad inputs with the same messages. No global PIL state
is touched: the pixel limit is checked on the header size before any pixel is decoded.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


class ImageDecodeError(ValueError):
    """The bytes are not a usable image; the message says why."""


@dataclass(frozen=True)
class ImageInfo:
    width: int | None
    height: int | None
    mode: str | None
    format: str | None
    decodable: bool
    error: str | None


def _parse_header(data: bytes) -> Image.Image:
    """Image.open reads only the header; no pixel is decoded here."""
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(f"refused without decoding (decompression-bomb guard): {e}") from e
    except UnidentifiedImageError as e:
        raise ImageDecodeError("not a recognised image format") from e
    except Exception as e:
        raise ImageDecodeError(f"unreadable image header: {e}") from e
    return im


def _check_pixels(im: Image.Image, max_pixels: int) -> Image.Image:
    w, h = im.size
    if w * h > max_pixels:
        raise ImageDecodeError(
            f"refused without decoding (decompression-bomb guard): header declares "
            f"{w}x{h} = {w * h} pixels, over the limit of {max_pixels}"
        )
    return im


def decode_image(data: bytes, max_pixels: int = 64_000_000) -> Image.Image:
    """Fully decode ``data`` (catching truncation); raise ImageDecodeError if unusable."""
    im = _check_pixels(_parse_header(data), max_pixels)
    try:
        im.load()
    except Exception as e:
        raise ImageDecodeError(f"corrupt or truncated image data: {e}") from e
    return im


def inspect_image(data: bytes, max_pixels: int = 64_000_000) -> ImageInfo:
    """Describe ``data`` for the manifest; never raises on bad images."""
    header: Image.Image | None = None
    try:
        header = _parse_header(data)
        im = decode_image(data, max_pixels)
        return ImageInfo(im.width, im.height, im.mode, im.format, True, None)
    except ImageDecodeError as e:
        if header is not None:
            return ImageInfo(header.width, header.height, header.mode, header.format, False, str(e))
        return ImageInfo(None, None, None, None, False, str(e))


def to_mode(im: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL mode (RGBA, CMYK, P, 16-bit, ...) to ``L`` or ``RGB``."""
    if im.mode in _SIXTEEN_BIT:
        # convert("L") clips 16-bit values at 255; scale the full range down instead.
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Composite transparency on white rather than letting it turn black.
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    target = "L" if channels == 1 else "RGB"
    return im if im.mode == target else im.convert(target)


def is_convertible(mode: str | None) -> bool:
    return (
        mode
        in {"1", "L", "P", "RGB", "RGBA", "LA", "PA", "CMYK", "YCbCr", "LAB", "HSV", "F"}
        | _SIXTEEN_BIT
    )
