"""Tiny image helpers for the emulators, standard library only.

`solid_png` makes a real PNG (8-bit RGB, one colour) of any size, cached so that
serving many 1024x1024 answers costs almost nothing; `noise_png` makes one of random
pixels (incompressible: about 3 MB at 1024x1024, for benchmarks that need heavy answers);
`image_size` and `image_kind` read what a client uploaded (PNG or JPEG) without any
imaging library.
"""

from __future__ import annotations

import functools
import hashlib
import random
import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"

# The colour channels an emulator picks from: 4 levels per channel, 64 colours in all,
# so the cache below stays small while different prompts still look different.
_LEVELS = (0x20, 0x60, 0xA0, 0xE0)

# JPEG start-of-frame markers (the ones that carry the frame's dimensions).
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# JPEG markers that stand alone, without a length field.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})

Colour = tuple[int, int, int]


def colour_for(*parts: object) -> Colour:
    """Derive a stable colour from anything (prompt, seed, index) by hashing it."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return (_LEVELS[digest[0] % 4], _LEVELS[digest[1] % 4], _LEVELS[digest[2] % 4])


def _chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, payload and the CRC over type and payload."""
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


@functools.lru_cache(maxsize=256)
def solid_png(width: int, height: int, colour: Colour = (0x60, 0xA0, 0xE0)) -> bytes:
    """A valid PNG (8-bit RGB, no interlace) of `width` x `height` filled with `colour`."""
    if not (0 < width <= 16384 and 0 < height <= 16384):
        raise ValueError(f"unsupported PNG size {width}x{height}")
    row = b"\x00" + bytes(colour) * width  # filter type 0 ("None") then the pixels
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(row * height, 6)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


NOISE_VARIANTS = 4
"""How many different noise images `noise_png` makes per size (the index is taken modulo this)."""


@functools.lru_cache(maxsize=32)
def noise_png(width: int, height: int, index: int = 0) -> bytes:
    """A valid PNG (8-bit RGB) of `width` x `height` random pixels, deterministic per
    (size, index % NOISE_VARIANTS) and cached. The pixels do not compress, so the file
    is about width * height * 3 bytes (stored deflate blocks: cheap to make)."""
    if not (0 < width <= 16384 and 0 < height <= 16384):
        raise ValueError(f"unsupported PNG size {width}x{height}")
    rng = random.Random(f"noise:{width}x{height}:{index % NOISE_VARIANTS}")
    stride = width * 3
    raw = b"".join(b"\x00" + rng.randbytes(stride) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(raw, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def image_kind(data: bytes) -> str | None:
    """'png' or 'jpeg' from the magic bytes, else None."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SIGNATURE):
        return "jpeg"
    return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG or JPEG image, or None when it is neither or is broken."""
    kind = image_kind(data)
    if kind == "png":
        return _png_size(data)
    if kind == "jpeg":
        return _jpeg_size(data)
    return None


def _png_size(data: bytes) -> tuple[int, int] | None:
    """Read the IHDR chunk, which the PNG format requires to come first."""
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return (width, height) if width and height else None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk the JPEG marker segments up to the first start-of-frame."""
    pos = 2
    end = len(data)
    while pos + 1 < end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        pos += 2
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA) or pos + 2 > end:  # end of image / scan data: no frame seen
            return None
        (length,) = struct.unpack(">H", data[pos : pos + 2])
        if marker in _JPEG_SOF_MARKERS:
            if pos + 7 > end:
                return None
            height, width = struct.unpack(">HH", data[pos + 3 : pos + 7])
            return (width, height) if width and height else None
        pos += length
    return None
