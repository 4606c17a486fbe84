"""PNG files of drawn images, written here: row filters in numpy, deflate by ISA-L where it is installed.

Pillow's PNG encoder took 34 ms of CPU for a 512x512 image of the tiny model on these machines
(about 15 ms trying each row's five filters, 20 ms in zlib), a quarter of what the model takes
to draw it; on a CPU-only server that time is taken from drawing the next one. Here each row
gets the cheaper of three filters (None, Sub, Up), chosen for all rows at once in numpy by the
usual measure (the smallest sum of the filtered bytes read as signed), and the rows are deflated
by ISA-L's ``isal_zlib`` (the ``isal`` package, part of the ``[local]`` extra) at its level 1, or
by the standard library's zlib at level 1 where it is missing: 3.2 ms for the same image, for
files 3-5% larger than Pillow's (which picks Paeth for most rows; Paeth is not tried here). The
file is a standard PNG (8 bits per channel, no interlace) any decoder reads back to the same
pixels. Sizes and times: docs/local_backend.md ("PNG writing, chosen by measurement").
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image

__all__ = ["DEFLATE", "png_bytes", "writes"]

try:
    from isal import isal_zlib

    DEFLATE = "isal"
    _compress: Callable[[bytes], bytes] = lambda data: isal_zlib.compress(data, 1)  # noqa: E731
except ImportError:  # the [local] extra without isal: the standard library's zlib
    DEFLATE = "zlib"
    _compress = lambda data: zlib.compress(data, 1)  # noqa: E731

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Pillow mode → (PNG colour type, channels)
_COLOUR_TYPES = {"L": (0, 1), "RGB": (2, 3), "RGBA": (6, 4)}


def writes(image: Image.Image) -> bool:
    """Whether ``png_bytes`` writes this image (8-bit grey, RGB or RGBA); others go to Pillow."""
    return image.mode in _COLOUR_TYPES


def png_bytes(image: Image.Image) -> bytes:
    """``image`` (mode L, RGB or RGBA) as a PNG file."""
    colour_type, channels = _COLOUR_TYPES[image.mode]
    width, height = image.size
    pixels = np.asarray(image, dtype=np.uint8).reshape(height, width * channels)
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    idat = _compress(_filtered(pixels, channels))
    return b"".join((_SIGNATURE, _chunk(b"IHDR", header), _chunk(b"IDAT", idat), _chunk(b"IEND", b"")))


def _filtered(rows: np.ndarray, channels: int) -> bytes:
    """Each row with its filter byte in front: None (0), Sub (1) or Up (2), whichever is cheaper for that row."""
    height = rows.shape[0]
    sub = rows.copy()
    sub[:, channels:] -= rows[:, :-channels]  # uint8: wraps modulo 256, as PNG's filters do
    up = rows.copy()
    up[1:] -= rows[:-1]
    candidates = np.stack((rows, sub, up))  # filter type = index
    # |byte read as signed|, summed per row; abs(-128) wraps to -128 in int8, read back unsigned it is 128
    cost = np.abs(candidates.view(np.int8)).view(np.uint8).sum(axis=2, dtype=np.int32)
    chosen = cost.argmin(axis=0)
    out = np.empty((height, rows.shape[1] + 1), dtype=np.uint8)
    out[:, 0] = chosen
    out[:, 1:] = candidates[chosen, np.arange(height)]
    return out.tobytes()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
