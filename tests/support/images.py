"""Real encodings of one image, in every form clients send."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encodings(base: bytes) -> dict[str, bytes]:
    """The same picture as JPEG, PNG, WebP, grayscale, RGBA, CMYK JPEG and 16-bit PNG."""
    im = Image.open(io.BytesIO(base)).convert("RGB").resize((24, 24))

    def save(img: Image.Image, fmt: str, **kw) -> bytes:
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        return buf.getvalue()

    sixteen = Image.fromarray(np.asarray(im.convert("L"), dtype=np.uint16) * 257)  # mode I;16
    return {
        "jpeg": save(im, "JPEG", quality=95),
        "png": save(im, "PNG"),
        "webp": save(im, "WEBP", lossless=True),
        "grayscale": save(im.convert("L"), "PNG"),
        "rgba": save(im.convert("RGBA"), "PNG"),
        "cmyk": save(im.convert("CMYK"), "JPEG"),
        "16-bit": save(sixteen, "PNG"),
    }
