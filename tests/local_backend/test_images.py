"""Client images into the pipelines, drawn images out as file bytes."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from local_backend.images import encode_image, encode_images, read_image, read_mask
from schemas.canonical import ErrorCode, GatewayError
from schemas.dialect import sniff_image
from tests.local_backend.bad_images import bomb_png, huge_valid_png, small_png, truncated_png, zero_png


def file_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_input_image_becomes_rgb_at_the_drawn_size() -> None:
    image = read_image(file_bytes(Image.new("RGBA", (30, 20), (1, 2, 3, 4))), 64, 32)
    assert (image.mode, image.size) == ("RGB", (64, 32))


def test_a_transparent_mask_marks_what_to_edit() -> None:
    mask = Image.new("RGBA", (4, 1), (0, 0, 0, 255))
    mask.putpixel((0, 0), (0, 0, 0, 0))  # transparent: edit here (OpenAI's convention)
    grey = read_mask(file_bytes(mask), 4, 1)
    assert grey.mode == "L" and list(grey.get_flattened_data()) == [255, 0, 0, 0]


def test_an_opaque_mask_is_read_as_white_means_edit() -> None:
    mask = Image.new("L", (2, 1), 0)
    mask.putpixel((1, 0), 255)
    assert list(read_mask(file_bytes(mask), 2, 1).get_flattened_data()) == [0, 255]


def test_bytes_that_are_no_image_are_invalid_request() -> None:
    with pytest.raises(GatewayError) as caught:
        read_image(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 8, 8)
    assert caught.value.code is ErrorCode.INVALID_REQUEST and caught.value.param == "image"


@pytest.mark.parametrize(
    "data", [bomb_png(), truncated_png(), zero_png(), huge_valid_png()], ids=["bomb", "truncated", "0x0", "12000x12000"]
)
@pytest.mark.parametrize("read", [read_image, read_mask])
def test_whatever_pillow_makes_of_bad_bytes_is_the_clients_invalid_request(read: Any, data: bytes) -> None:
    """Pillow's DecompressionBombError, a truncated file's OSError, ...: a 400 naming the field, never a 502."""
    field = "image" if read is read_image else "mask"
    with pytest.raises(GatewayError) as caught:
        read(data, 8, 8)
    assert caught.value.code is ErrorCode.INVALID_REQUEST and caught.value.param == field


def test_an_image_pillow_opens_but_cannot_convert_is_the_clients_too() -> None:
    """A LAB TIFF decodes, but Pillow cannot make grey levels of it: still the client's 400, not the backend's 502."""
    lab = file_bytes(Image.new("LAB", (8, 8)), "TIFF")
    with pytest.raises(GatewayError) as caught:
        read_mask(lab, 8, 8)
    assert caught.value.code is ErrorCode.INVALID_REQUEST and caught.value.param == "mask"


def test_the_pixel_bound_is_checked_again_before_the_decode() -> None:
    assert read_image(small_png(64, 64), 8, 8, max_pixels=64 * 64).size == (8, 8)
    with pytest.raises(GatewayError) as caught:
        read_image(small_png(64, 64), 8, 8, max_pixels=64 * 64 - 1)
    assert caught.value.code is ErrorCode.INVALID_REQUEST


@pytest.mark.parametrize(("fmt", "media_type"), [("png", "image/png"), ("jpeg", "image/jpeg"), ("webp", "image/webp")])
def test_encode_in_the_asked_format(fmt: str, media_type: str) -> None:
    data, media = encode_image(Image.new("RGB", (8, 8), "blue"), fmt)
    assert media == media_type and sniff_image(data) == media_type


def test_png_encoding_is_deterministic() -> None:
    image = Image.effect_noise((32, 32), 40).convert("RGB")
    assert encode_image(image)[0] == encode_image(image)[0]


@pytest.mark.parametrize(("fmt", "pillow_format"), [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_output_compression_sets_the_quality_of_jpeg_and_webp(fmt: str, pillow_format: str) -> None:
    image = Image.effect_noise((64, 64), 60).convert("RGB")
    sizes = []
    for compression in (10, 95):
        data, _ = encode_image(image, fmt, compression)
        opened = Image.open(io.BytesIO(data))
        assert opened.format == pillow_format and opened.size == (64, 64)
        sizes.append(len(data))
    assert sizes[0] < sizes[1]  # a lower quality, a smaller file
    assert encode_image(image, fmt)[0] == encode_image(image, fmt, None)[0] != encode_image(image, fmt, 10)[0]


def test_png_ignores_output_compression_and_keeps_every_pixel() -> None:
    image = Image.effect_noise((32, 32), 40).convert("RGB")
    data, _ = encode_image(image, "png", 10)
    assert data == encode_image(image, "png")[0]
    assert Image.open(io.BytesIO(data)).tobytes() == image.tobytes()


def test_an_image_with_alpha_can_still_be_a_jpeg() -> None:
    data, media = encode_image(Image.new("RGBA", (8, 8), (1, 2, 3, 4)), "jpeg", 80)
    assert media == "image/jpeg" and Image.open(io.BytesIO(data)).format == "JPEG"


async def test_a_batch_is_encoded_in_the_order_drawn() -> None:
    images = [Image.effect_noise((16, 16), 10 + i).convert("RGB") for i in range(4)]
    encoded = await encode_images(images, "webp", 50)
    assert [data for data, _ in encoded] == [encode_image(image, "webp", 50)[0] for image in images]
