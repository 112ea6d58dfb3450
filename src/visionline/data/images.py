"""Decoding and inspecting image bytes, safely.

Shared by ingestion (inspect), training (decode) and the TorchServe handler (decode),
so every path refuses the same bad inputs with the same messages. No global PIL state
is touched. Every check below reads only the header (or counts markers in the bytes)
and runs before any pixel is decoded or resized, so the work an image can cause is
bounded by the limits, not by what its header claims:

- formats: only JPEG, PNG, WebP, BMP, TIFF and GIF are opened (Pillow would also open
  EPS through Ghostscript, and dozens of rarely audited formats);
- pixels: the declared size against ``max_pixels`` (decompression bombs);
- aspect ratio: longer edge / shorter edge against ``max_aspect_ratio``;
- resized size: resizing the shorter edge to ``target_short_edge`` (what the eval
  transform does) turns a 1 x N strip into T x T*N pixels; that product is checked
  against ``max_resized_pixels`` when the caller knows T;
- JPEG scans: each scan of a progressive JPEG is a pass over the whole image, and a
  scan can be a dozen bytes, so the count of scans is bounded (``MAX_JPEG_SCANS``);
- frames: only the first frame of an animated or multi-page image is decoded; the
  others are never read (counting them would itself mean walking the whole file).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# What Image.open may identify; JPEG includes MPO (a camera's multi-picture JPEG).
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}

DEFAULT_MAX_PIXELS = 64_000_000
# Panoramas and scanned strips reach 1:10; a 1:32 picture is no longer one a
# classifier trained on ordinary photos can say anything about.
DEFAULT_MAX_ASPECT_RATIO = 32.0
# 16 MP after the resize: 48 MB as uint8 RGB, a bounded cost per image in any batch.
DEFAULT_MAX_RESIZED_PIXELS = 16_000_000
# Encoders write 1 scan (baseline) or about 10 (libjpeg's progressive script; mozjpeg
# up to about 20). Each scan costs a pass over every 8x8 block of the image.
MAX_JPEG_SCANS = 100
_JPEG_SOS = b"\xff\xda"


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


def image_limits(section: Any, target_short_edge: int | None = None) -> dict[str, Any]:
    """``decode_image``'s keyword limits from a config section (``data`` or ``serve``)."""
    return {
        "max_pixels": section.max_image_pixels,
        "max_aspect_ratio": section.max_aspect_ratio,
        "max_resized_pixels": section.max_resized_pixels,
        "target_short_edge": target_short_edge,
    }


def _parse_header(data: bytes) -> Image.Image:
    """Image.open reads only the header; no pixel is decoded here."""
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        im = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(f"refused without decoding (decompression-bomb guard): {e}") from e
    except UnidentifiedImageError as e:
        raise ImageDecodeError(
            f"not a recognised image format (accepted: {', '.join(IMAGE_FORMATS)})"
        ) from e
    except Exception as e:
        raise ImageDecodeError(f"unreadable image header: {e}") from e
    return im


def resized_size(width: int, height: int, short_edge: int) -> tuple[int, int]:
    """(width, height) after resizing the shorter edge to ``short_edge``, keeping the
    aspect ratio, as torchvision's ``Resize(int)`` computes it."""
    if width <= height:
        return short_edge, int(short_edge * height / width)
    return int(short_edge * width / height), short_edge


def check_limits(
    im: Image.Image,
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
    target_short_edge: int | None = None,
    max_resized_pixels: int = DEFAULT_MAX_RESIZED_PIXELS,
) -> Image.Image:
    """Refuse, from the header alone, an image whose decoding or resizing would cost
    more than the limits allow; the message says which limit and by how much."""
    w, h = im.size
    if w < 1 or h < 1:
        raise ImageDecodeError(f"header declares {w}x{h}: an image without pixels")
    if w * h > max_pixels:
        raise ImageDecodeError(
            f"refused without decoding (decompression-bomb guard): header declares "
            f"{w}x{h} = {w * h} pixels, over the limit of {max_pixels}"
        )
    ratio = max(w, h) / min(w, h)
    if ratio > max_aspect_ratio:
        raise ImageDecodeError(
            f"refused without decoding: {w}x{h} has an aspect ratio of {ratio:.4g}:1, "
            f"over the limit of {max_aspect_ratio:g}:1"
        )
    if target_short_edge is not None:
        rw, rh = resized_size(w, h, target_short_edge)
        if rw * rh > max_resized_pixels:
            raise ImageDecodeError(
                f"refused without decoding: resizing {w}x{h} to a shorter edge of "
                f"{target_short_edge} px would make {rw}x{rh} = {rw * rh} pixels, over the "
                f"limit of {max_resized_pixels}"
            )
    if im.format in ("JPEG", "MPO"):
        # An upper bound: a marker inside metadata counts too, a real scan never hides.
        scans = data.count(_JPEG_SOS)
        if scans > MAX_JPEG_SCANS:
            raise ImageDecodeError(
                f"refused without decoding: a JPEG with {scans} scans, over the limit of "
                f"{MAX_JPEG_SCANS} (each scan is a pass over the whole image)"
            )
    return im


def decode_image(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
    target_short_edge: int | None = None,
    max_resized_pixels: int = DEFAULT_MAX_RESIZED_PIXELS,
) -> Image.Image:
    """Fully decode the first frame of ``data`` (catching truncation) once the header
    passed every limit; raise ImageDecodeError if unusable.

    ``target_short_edge`` is the size the caller will resize the shorter edge to
    (``Preprocessing.resize_to``); when given, the resized size is bounded as well.
    """
    im = check_limits(
        _parse_header(data),
        data,
        max_pixels,
        max_aspect_ratio,
        target_short_edge,
        max_resized_pixels,
    )
    try:
        im.load()  # the current frame: the first one, since nothing has seeked
    except Exception as e:
        raise ImageDecodeError(f"corrupt or truncated image data: {e}") from e
    return im


def inspect_image(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
    target_short_edge: int | None = None,
    max_resized_pixels: int = DEFAULT_MAX_RESIZED_PIXELS,
) -> ImageInfo:
    """Describe ``data`` for the manifest; never raises on bad images."""
    header: Image.Image | None = None
    try:
        header = _parse_header(data)
        im = decode_image(data, max_pixels, max_aspect_ratio, target_short_edge, max_resized_pixels)
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
