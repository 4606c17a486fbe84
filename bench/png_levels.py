"""What writing a PNG costs the local backend: local_backend/png.py against Pillow, in CPU and bytes.

Run: ``python -m bench.png_levels`` (CPU only; builds or reuses the built-in tiny SD model under
``$IMAGE_GATEWAY_MODEL_DIR``, default ``var/models``). Draws 4 images per size (64 and 512 px, seed 3)
through the engine, decodes them, and re-encodes each with: Pillow at zlib levels 1 and 6 (6 is
Pillow's default), png.py with ISA-L at level 1 (what the engine does when ``isal`` is installed) and
at level 3 (ISA-L's highest, for reference), and
png.py's row filters with the standard library's zlib at level 1 (what it does without ``isal``);
then the same for one smooth synthetic 512x512 image (gradients and blurred noise). Prints bytes per
image and thread CPU per image (median of 5), after checking that every file decodes to the same
pixels. docs/local_backend.md ("PNG writing, chosen by measurement") records the numbers.
"""

from __future__ import annotations

import asyncio
import io
import statistics
import struct
import time
import zlib
from collections.abc import Callable

import msgspec
import numpy as np
from PIL import Image, ImageFilter

from local_backend import png

Encoder = Callable[[Image.Image], bytes]
SIDES = (64, 512)
IMAGES = 4
SEED = 3
REPEATS = 5


def _pillow(level: int) -> Encoder:
    def encode(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=level)
        return buffer.getvalue()

    return encode


def _png_py(compress: Callable[[bytes], bytes]) -> Encoder:
    """png.png_bytes with the given deflate (png.py's own internals: the row filters and chunks)."""

    def encode(image: Image.Image) -> bytes:
        colour_type, channels = png._COLOUR_TYPES[image.mode]
        width, height = image.size
        pixels = np.asarray(image, dtype=np.uint8).reshape(height, width * channels)
        header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
        idat = compress(png._filtered(pixels, channels))
        return b"".join(
            (png._SIGNATURE, png._chunk(b"IHDR", header), png._chunk(b"IDAT", idat), png._chunk(b"IEND", b""))
        )

    return encode


def encoders() -> dict[str, Encoder]:
    found: dict[str, Encoder] = {"Pillow, level 1": _pillow(1), "Pillow, level 6 (its default)": _pillow(6)}
    try:
        from isal import isal_zlib

        found["png.py, ISA-L level 1"] = _png_py(lambda data: isal_zlib.compress(data, 1))
        found["png.py, ISA-L level 3 (its highest)"] = _png_py(lambda data: isal_zlib.compress(data, 3))
    except ImportError:
        print("isal is not installed: png.py with ISA-L is left out")
    found["png.py, zlib level 1"] = _png_py(lambda data: zlib.compress(data, 1))
    return found


async def drawn(side: int) -> list[Image.Image]:
    """IMAGES images of the built-in tiny model, drawn through the engine and decoded."""
    from local_backend.engine import LocalEngine
    from schemas.canonical import ImageRequest
    from schemas.local import LocalBackendSettings

    raw = {
        "kind": "local",
        "device": "cpu",
        "max_batch_size": IMAGES,
        "models": {"tiny": {"path": "builtin:tiny-sd", "max_pixels": side * side}},
    }
    engine = LocalEngine(msgspec.convert(raw, LocalBackendSettings), name="png-bench")
    await engine.start()
    try:
        request = ImageRequest(model="tiny", prompt="a lighthouse", n=IMAGES, width=side, height=side, seed=SEED)
        result = await engine.generate(request)
    finally:
        await engine.aclose()
    images: list[Image.Image] = []
    for image in result.images:
        assert image.data is not None
        decoded = Image.open(io.BytesIO(image.data))
        decoded.load()
        images.append(decoded)
    return images


def smooth(side: int = 512) -> Image.Image:
    """A smooth RGB picture: a linear gradient, a radial one, and blurred noise over a gradient."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float64) / (side - 1)
    radial = np.hypot(x - 0.5, y - 0.5) / np.hypot(0.5, 0.5)
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side), dtype=np.uint8))
    blurred = np.asarray(noise.filter(ImageFilter.GaussianBlur(8)), dtype=np.float64)
    blurred = (blurred - blurred.min()) / max(float(np.ptp(blurred)), 1.0)
    channels = (x, 1.0 - radial, 0.6 * y + 0.4 * blurred)
    return Image.fromarray((np.stack(channels, axis=2) * 255).round().astype(np.uint8), "RGB")


def measure(images: list[Image.Image], encode: Encoder) -> tuple[float, float]:
    """(bytes per image, thread CPU ms per image: the median of REPEATS runs over all the images)."""
    reference = [np.asarray(image) for image in images]
    files = [encode(image) for image in images]  # also warms up
    for file, pixels in zip(files, reference, strict=True):
        back = Image.open(io.BytesIO(file))
        assert np.array_equal(np.asarray(back), pixels), "decoded pixels differ"
    times = []
    for _ in range(REPEATS):
        started = time.thread_time()
        for image in images:
            encode(image)
        times.append((time.thread_time() - started) * 1000 / len(images))
    return sum(map(len, files)) / len(files), statistics.median(times)


def main() -> None:
    cases = [(f"tiny model, {side} px", asyncio.run(drawn(side))) for side in SIDES]
    cases.append(("smooth synthetic, 512 px", [smooth()]))
    print(f"png.py deflates with: {png.DEFLATE}")
    print("| images | encoder | bytes per image | ms per image |")
    print("|---|---|---:|---:|")
    for title, images in cases:
        for name, encode in encoders().items():
            size, ms = measure(images, encode)
            print(f"| {title} | {name} | {size:,.0f} | {ms:.2f} |")


if __name__ == "__main__":
    main()
