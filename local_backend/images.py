"""Images in and out of the pipelines: client bytes to Pillow images, drawn images to file bytes."""

from __future__ import annotations

import io

from PIL import Image, ImageOps, UnidentifiedImageError

from schemas.canonical import ErrorCode, GatewayError

__all__ = ["MEDIA_TYPES", "encode_image", "read_image", "read_mask"]

# output_format → (Pillow format, media type)
MEDIA_TYPES: dict[str, tuple[str, str]] = {
    "png": ("PNG", "image/png"),
    "jpeg": ("JPEG", "image/jpeg"),
    "webp": ("WEBP", "image/webp"),
}


def _open(data: bytes, field: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise GatewayError(
            ErrorCode.INVALID_REQUEST, f"`{field}` is not an image that can be read", param=field
        ) from exc
    return image


def read_image(data: bytes, width: int, height: int) -> Image.Image:
    """The input image of an edit or variation, as RGB at the size to be drawn."""
    return _open(data, "image").convert("RGB").resize((width, height), Image.Resampling.LANCZOS)


def read_mask(data: bytes, width: int, height: int) -> Image.Image:
    """The inpainting mask as diffusers wants it: white where to paint, black where to keep.

    A mask with transparency follows OpenAI's convention (the transparent part is what
    gets edited); an opaque one is read as grey levels, white meaning edit.
    """
    mask = _open(data, "mask")
    if mask.mode in ("RGBA", "LA") or (mask.mode == "P" and "transparency" in mask.info):
        alpha = mask.convert("RGBA").getchannel("A")
        grey = ImageOps.invert(alpha)
    else:
        grey = mask.convert("L")
    return grey.resize((width, height), Image.Resampling.NEAREST)


def encode_image(image: Image.Image, output_format: str = "png") -> tuple[bytes, str]:
    """File bytes of ``image`` in ``output_format`` (PNG unless jpeg or webp), and their media type."""
    pillow_format, media_type = MEDIA_TYPES.get(output_format, MEDIA_TYPES["png"])
    buffer = io.BytesIO()
    image.save(buffer, format=pillow_format)
    return buffer.getvalue(), media_type
