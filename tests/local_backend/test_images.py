"""Client images into the pipelines, drawn images out as file bytes."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from local_backend.images import encode_image, read_image, read_mask
from schemas.canonical import ErrorCode, GatewayError
from schemas.dialect import sniff_image


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


@pytest.mark.parametrize(("fmt", "media_type"), [("png", "image/png"), ("jpeg", "image/jpeg"), ("webp", "image/webp")])
def test_encode_in_the_asked_format(fmt: str, media_type: str) -> None:
    data, media = encode_image(Image.new("RGB", (8, 8), "blue"), fmt)
    assert media == media_type and sniff_image(data) == media_type


def test_png_encoding_is_deterministic() -> None:
    image = Image.effect_noise((32, 32), 40).convert("RGB")
    assert encode_image(image)[0] == encode_image(image)[0]
