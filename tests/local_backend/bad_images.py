"""Input images a client may send to hurt the local backend, made byte by byte.

Each is a few bytes to a few hundred kilobytes on the wire: a PNG header declaring
50000x50000 pixels (a decompression bomb), a WebP header declaring 16384x16384, a PNG
header declaring 0x0, a real image cut short, and a real, valid 12000x12000 PNG that
compresses to about 140 KB but decodes to 144 MB.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib

from PIL import Image

__all__ = ["bomb_png", "huge_valid_png", "png_header", "small_png", "truncated_png", "webp_bomb", "zero_png"]

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width: int, height: int, idat: bytes = b"", colour_type: int = 2) -> bytes:
    """A PNG file whose IHDR declares ``width`` x ``height`` 8-bit pixels, with ``idat`` as its only data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def bomb_png() -> bytes:
    """69 bytes declaring 50000x50000 RGB pixels (7.5 GB decoded), the start of a deflate stream as its data."""
    return png_header(50_000, 50_000, zlib.compress(b"\x00" * 64)[:12])


def webp_bomb() -> bytes:
    """An extended WebP's header declaring a 16384x16384 canvas (1 GB as RGBA), and nothing else: 30 bytes."""
    vp8x = bytes(4) + (16383).to_bytes(3, "little") + (16383).to_bytes(3, "little")  # flags, then width-1, height-1
    chunk = b"VP8X" + len(vp8x).to_bytes(4, "little") + vp8x
    return b"RIFF" + (4 + len(chunk)).to_bytes(4, "little") + b"WEBP" + chunk


def zero_png() -> bytes:
    """A PNG header declaring 0x0 pixels."""
    return png_header(0, 0, zlib.compress(b""))


def small_png(width: int = 64, height: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def truncated_png() -> bytes:
    """A real 64x64 PNG of noise, cut off in the middle of its pixel data."""
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(buffer, format="PNG")
    whole = buffer.getvalue()
    return whole[: len(whole) // 2]


@functools.cache
def huge_valid_png(side: int = 12_000) -> bytes:
    """A valid ``side`` x ``side`` greyscale PNG of zeros: about 140 KB that decode to ``side``² bytes."""
    deflate = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte None, then the row's pixels
    rows_per_piece = 256
    parts = []
    for start in range(0, side, rows_per_piece):
        parts.append(deflate.compress(row * min(rows_per_piece, side - start)))
    parts.append(deflate.flush())
    return png_header(side, side, b"".join(parts), colour_type=0)
