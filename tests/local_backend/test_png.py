"""The PNG writer of drawn images (local_backend/png.py): files any decoder reads back to the same pixels."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFilter

from local_backend import png
from local_backend.images import encode_image


def pixels_of(data: bytes) -> tuple[str, np.ndarray]:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.mode, np.asarray(image)


def images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(7)
    axis = np.linspace(0, 1, 96)
    across, down = np.meshgrid(axis, axis)
    gradient = (np.stack([across, down, across * down], -1) * 255).astype(np.uint8)
    return {
        "noise RGB": Image.fromarray(rng.integers(0, 256, (61, 97, 3), dtype=np.uint8)),
        "gradient RGB": Image.fromarray(gradient),
        "blurred RGBA": Image.fromarray(rng.integers(0, 256, (40, 33, 4), dtype=np.uint8)).filter(
            ImageFilter.GaussianBlur(2)
        ),
        "grey L": Image.fromarray(rng.integers(0, 256, (17, 5), dtype=np.uint8)),
        "one pixel": Image.new("RGB", (1, 1), (255, 0, 128)),
    }


@pytest.mark.parametrize("name", list(images()))
def test_every_pixel_comes_back(name: str) -> None:
    image = images()[name]
    mode, pixels = pixels_of(png.png_bytes(image))
    assert mode == image.mode
    assert np.array_equal(pixels, np.asarray(image))


def test_each_row_takes_a_filter_that_suits_it() -> None:
    """Rows that repeat (a ramp along each row) are cheapest with Up; rows of one value each (a ramp down the
    image) with Sub: each is chosen where it suits, and both compress."""
    along = np.tile(np.arange(256, dtype=np.uint8), (64, 1))
    down = np.tile(np.arange(256, dtype=np.uint8)[:, None], (1, 512))
    for image, expected in ((Image.fromarray(along), 2), (Image.fromarray(down), 1)):
        data = png.png_bytes(image)
        assert np.array_equal(pixels_of(data)[1], np.asarray(image))
        idat = data[data.index(b"IDAT") + 4 :]
        rows = zlib.decompressobj().decompress(idat)
        width = image.width + 1
        filters = {rows[index * width] for index in range(1, image.height)}  # the first row has no row above
        assert filters == {expected}
        assert len(data) < image.width * image.height // 8


def test_drawn_pngs_are_written_here_and_other_modes_by_pillow() -> None:
    rgb = images()["noise RGB"]
    data, media_type = encode_image(rgb, "png")
    assert media_type == "image/png" and data == png.png_bytes(rgb)
    palette = rgb.convert("P")
    assert not png.writes(palette)
    data, _ = encode_image(palette, "png")
    mode, pixels = pixels_of(data)
    assert mode == "P" and np.array_equal(pixels, np.asarray(palette))
