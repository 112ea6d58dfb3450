"""Images built to cost more than they look: strips, scan bombs, animations, big headers.

Each builder writes real, standard-conforming bytes (Pillow or the format's own chunk
layout), so a decoder that accepts them does the work they ask for.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def strip_png(width: int, height: int) -> bytes:
    """A valid 8-bit grayscale PNG of width x height, all black: a 1 x 4,000,000 strip
    is under 8 KB, because zeros compress about 1000:1."""
    row = b"\x00" * (1 + width)  # filter byte + pixels
    z = zlib.compressobj(9)
    chunks, left = [], height
    block = row * max(1, min(height, (1 << 20) // len(row)))
    rows_per_block = len(block) // len(row)
    while left > 0:
        n = min(left, rows_per_block)
        chunks.append(z.compress(block if n == rows_per_block else row * n))
        left -= n
    chunks.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", b"".join(chunks))
        + _png_chunk(b"IEND", b"")
    )


def scan_bomb_jpeg(side: int = 1024, scans: int = 2000) -> bytes:
    """A progressive JPEG followed by ``scans`` extra AC scans of a dozen bytes each.

    Each extra scan codes the whole luma band 63..63 as end-of-band runs (one Huffman
    symbol per 16,384 blocks), so it is tiny, yet the decoder walks every block of the
    image for it: the work grows with scans x pixels, not with the file's size."""
    assert side % 1024 == 0, "whole runs of 2**14 blocks"
    im = Image.fromarray(np.zeros((side, side), dtype=np.uint8), "L")
    buf = io.BytesIO()
    im.save(buf, "JPEG", progressive=True, quality=80)
    data = buf.getvalue()
    # AC table 1: a single 1-bit code for symbol 0xE0 (an end-of-band run of 2**14 + 14 bits)
    body = bytes([0x11]) + bytes([1] + [0] * 15) + bytes([0xE0])
    dht = b"\xff\xc4" + struct.pack(">H", 2 + len(body)) + body
    runs = (side // 8) ** 2 // (1 << 14)
    bits = "0" * 15 * runs
    bits += "1" * (-len(bits) % 8)
    entropy = int(bits, 2).to_bytes(len(bits) // 8, "big")
    sos = b"\xff\xda" + struct.pack(">HB", 8, 1) + bytes([1, 0x01, 63, 63, 0, 0])
    return data[:-2] + dht + (sos + entropy) * scans + data[-2:]


def _frames(n: int, size: int = 16, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), "L").convert("P")
        for _ in range(n)
    ]


def animated_gif(frames: int = 200, size: int = 16) -> bytes:
    buf = io.BytesIO()
    first, *rest = _frames(frames, size)
    first.save(buf, "GIF", save_all=True, append_images=rest, duration=20, loop=0)
    return buf.getvalue()


def apng(frames: int = 50, size: int = 16) -> bytes:
    buf = io.BytesIO()
    first, *rest = (f.convert("L") for f in _frames(frames, size))
    first.save(buf, "PNG", save_all=True, append_images=rest, duration=20)
    return buf.getvalue()


def multipage_tiff(pages: int = 50, size: int = 16) -> bytes:
    buf = io.BytesIO()
    first, *rest = (f.convert("L") for f in _frames(pages, size))
    first.save(buf, "TIFF", save_all=True, append_images=rest)
    return buf.getvalue()


def png_with_text(text_bytes: int = 2_000_000, size: int = 16) -> bytes:
    """A small PNG carrying ``text_bytes`` of tEXt metadata before its pixels."""
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), 128, dtype=np.uint8), "L").save(buf, "PNG")
    png = buf.getvalue()
    text = _png_chunk(b"tEXt", b"Comment\x00" + b"x" * text_bytes)
    return png[:33] + text + png[33:]  # after the 8-byte signature and IHDR (25 bytes)


def jpeg_with_comments(total_bytes: int = 2_000_000, size: int = 16) -> bytes:
    """A small JPEG whose header holds ``total_bytes`` of COM segments (64 KB each)."""
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), 100, dtype=np.uint8), "RGB").save(buf, "JPEG")
    jpg = buf.getvalue()
    segment = b"\xff\xfe" + struct.pack(">H", 65535) + b"c" * 65533
    return jpg[:2] + segment * max(1, total_bytes // len(segment)) + jpg[2:]


def gif_with_screen(width: int, height: int) -> bytes:
    """A GIF whose logical screen is width x height, with one 1x1 frame inside."""
    buf = io.BytesIO()
    Image.new("P", (1, 1)).save(buf, "GIF")
    gif = bytearray(buf.getvalue())
    gif[6:10] = struct.pack("<HH", width, height)
    return bytes(gif)


EPS = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n"
    b"%%EndComments\nnewpath 0 0 moveto 8 8 lineto stroke\n%%EOF\n"
)
