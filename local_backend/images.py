"""Images in and out of the pipelines: client bytes to Pillow images, drawn images to file bytes."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import Iterator, Sequence

from PIL import Image, ImageOps

from local_backend import png
from schemas.canonical import ErrorCode, GatewayError
from schemas.local import DEFAULT_MAX_INPUT_PIXELS

__all__ = ["MEDIA_TYPES", "PNG_COMPRESS_LEVEL", "encode_image", "encode_images", "read_image", "read_mask"]

# zlib level of the PNGs Pillow writes (images local_backend/png.py does not: modes other than L, RGB
# and RGBA), chosen by measurement (docs/local_backend.md).
PNG_COMPRESS_LEVEL = 1

# output_format → (Pillow format, media type)
MEDIA_TYPES: dict[str, tuple[str, str]] = {
    "png": ("PNG", "image/png"),
    "jpeg": ("JPEG", "image/jpeg"),
    "webp": ("WEBP", "image/webp"),
}


@contextlib.contextmanager
def _the_clients(field: str) -> Iterator[None]:
    """Whatever Pillow raises on the client's ``field`` is the client's 400, never a failure of the backend's.

    Untrusted bytes fail in many ways (a decompression bomb, a truncated or broken file, a
    mode that cannot be converted); none of them says anything about the backend.
    """
    try:
        yield
    except Exception as exc:
        raise GatewayError(
            ErrorCode.INVALID_REQUEST, f"`{field}` is not an image that can be read", param=field
        ) from exc


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """The client's image decoded, once the size its header declares is within ``max_pixels``.

    ``local_backend.rules`` checked the header before the request queued; the size Pillow
    reads is checked again here, before ``load()`` decodes a pixel.
    """
    image = Image.open(io.BytesIO(data))
    width, height = image.size
    if not 0 < width * height <= max_pixels:
        raise ValueError(f"{width}x{height} pixels")
    image.load()
    return image


def read_image(data: bytes, width: int, height: int, max_pixels: int = DEFAULT_MAX_INPUT_PIXELS) -> Image.Image:
    """The input image of an edit or variation, as RGB at the size to be drawn."""
    with _the_clients("image"):
        return _open(data, max_pixels).convert("RGB").resize((width, height), Image.Resampling.LANCZOS)


def read_mask(data: bytes, width: int, height: int, max_pixels: int = DEFAULT_MAX_INPUT_PIXELS) -> Image.Image:
    """The inpainting mask as diffusers wants it: white where to paint, black where to keep.

    A mask with transparency follows OpenAI's convention (the transparent part is what
    gets edited); an opaque one is read as grey levels, white meaning edit.
    """
    with _the_clients("mask"):
        mask = _open(data, max_pixels)
        if mask.mode in ("RGBA", "LA") or (mask.mode == "P" and "transparency" in mask.info):
            grey = ImageOps.invert(mask.convert("RGBA").getchannel("A"))
        else:
            grey = mask.convert("L")
        return grey.resize((width, height), Image.Resampling.NEAREST)


def encode_image(image: Image.Image, output_format: str = "png", compression: int | None = None) -> tuple[bytes, str]:
    """File bytes of ``image`` in ``output_format`` (PNG unless jpeg or webp), and their media type.

    ``compression`` is OpenAI's ``output_compression`` for jpeg and webp, read as their quality
    (100, OpenAI's default, the best); without it Pillow's own default quality applies. PNG is
    lossless and ignores it.
    """
    pillow_format, media_type = MEDIA_TYPES.get(output_format, MEDIA_TYPES["png"])
    if pillow_format == "PNG" and png.writes(image):
        return png.png_bytes(image), media_type
    options: dict[str, int] = {}
    if pillow_format == "PNG":
        options["compress_level"] = PNG_COMPRESS_LEVEL
    elif compression is not None:
        options["quality"] = compression
    if pillow_format == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")  # JPEG has no alpha
    buffer = io.BytesIO()
    image.save(buffer, format=pillow_format, **options)
    return buffer.getvalue(), media_type


async def encode_images(
    images: Sequence[Image.Image], output_format: str = "png", compression: int | None = None
) -> list[tuple[bytes, str]]:
    """``encode_image`` for each image at once, on threads (Pillow lets go of the GIL while it encodes)."""
    return list(
        await asyncio.gather(*(asyncio.to_thread(encode_image, image, output_format, compression) for image in images))
    )
