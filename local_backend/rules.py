"""What a loaded model may be asked, and requests checked against it before they queue.

A request that breaks a rule is refused at once with a clear error (``invalid_size``
for sizes), never after it has waited for the device. An input image or mask is checked
from its header alone, before any pixel is decoded: one that cannot be read, declares no
pixel or more than the model's ``max_input_pixels`` is the client's ``invalid_request``.
What survives is a ``Work``: the request with every default filled in and a seed chosen,
ready for the pipeline.
"""

from __future__ import annotations

import io
import secrets
from typing import Literal

import msgspec
from PIL import Image

from schemas.canonical import ErrorCode, GatewayError, ImageRequest, Operation
from schemas.dialect import image_dimensions
from schemas.local import DEFAULT_MAX_INPUT_PIXELS

__all__ = [
    "MAX_IMAGES_PER_REQUEST",
    "BatchKey",
    "ModelRules",
    "Work",
    "declared_size",
    "fit_size",
    "resolve",
    "webp_dimensions",
]

MAX_IMAGES_PER_REQUEST = 16
MAX_SEED = 2**32  # seeds are chosen below this
SEED_LIMIT = 2**64 - 1  # what a torch generator takes: a client's seed plus its image index stays within it
OutputFormat = Literal["png", "jpeg", "webp"]
OUTPUT_FORMATS: frozenset[str] = frozenset({"png", "jpeg", "webp"})


class ModelRules(msgspec.Struct, kw_only=True, frozen=True):
    """Sizes, steps and defaults of one served model, fixed when it is loaded."""

    name: str
    family: str
    # Width and height must be multiples of this (8 for SD and SDXL, 16 for Flux).
    multiple: int
    max_pixels: int
    max_steps: int
    default_size: int
    default_steps: int
    default_guidance: float
    strength: float
    # The most pixels an input image or mask may declare (``LocalModelSettings.max_input_pixels``).
    max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS
    operations: frozenset[Operation] = frozenset(Operation)
    # Each pipeline call draws at most this many pixels (its images' summed); one image always fits.
    batch_pixels: int = 2 * 1024 * 1024
    # Each request runs in calls of its own: what one image gets depends on the others in its call (a step cache).
    batch_alone: bool = False


class BatchKey(msgspec.Struct, frozen=True):
    """What requests must agree on to be drawn by one pipeline call."""

    model: str
    width: int
    height: int
    steps: int
    guidance: float
    # Whether a negative prompt is given: SDXL draws "none" (zeros) unlike an empty one, which a batch gets.
    negative: bool = False


class Work(msgspec.Struct, kw_only=True, frozen=True):
    """A request made ready for the pipeline: every default applied, the seed chosen.

    Image ``i`` of the request is drawn from seed ``seed + i``.
    """

    model: str
    operation: Operation
    prompt: str
    negative_prompt: str | None
    n: int
    width: int
    height: int
    steps: int
    guidance: float
    seed: int
    strength: float
    image: bytes | None = None
    mask: bytes | None = None
    output_format: OutputFormat = "png"
    output_compression: int | None = None  # jpeg/webp quality, 0-100
    # The model's pixel budget per pipeline call, and whether its requests run alone (``ModelRules``).
    batch_pixels: int = 2 * 1024 * 1024
    alone: bool = False

    @property
    def batch_key(self) -> BatchKey | None:
        """Generations batch with their like; an edit or variation (its own input image) runs alone.

        So does every request of a model whose images depend on their companions (a step cache).
        """
        if self.operation is not Operation.GENERATE or self.alone:
            return None
        return BatchKey(
            self.model, self.width, self.height, self.steps, self.guidance, self.negative_prompt is not None
        )

    def images_per_call(self, max_images: int) -> int:
        """How many of its images (and its companions') one pipeline call draws: within the pixel budget, at least one.

        With ``alone`` one image per call: a step cache decides for the whole call.
        """
        if self.alone:
            return 1
        return max(1, min(max_images, self.batch_pixels // (self.width * self.height)))

    @property
    def seeds(self) -> list[int]:
        return [self.seed + index for index in range(self.n)]


def resolve(request: ImageRequest, rules: ModelRules) -> Work:
    """Check ``request`` against ``rules`` and fill in what it left open; ``GatewayError`` when it breaks one."""
    _check_operation(request, rules)
    edit = request.operation is not Operation.GENERATE
    image = request.images[0].as_bytes() if edit else None
    mask = request.mask.as_bytes() if edit and request.mask is not None else None
    found = declared_size(image, "image", rules.max_input_pixels) if image is not None else None
    if mask is not None:
        declared_size(mask, "mask", rules.max_input_pixels)
    width, height = _size(request, rules, found)
    steps = rules.default_steps if request.steps is None else request.steps
    if not 1 <= steps <= rules.max_steps:
        raise GatewayError(
            ErrorCode.INVALID_REQUEST,
            f"model {rules.name!r} takes 1 to {rules.max_steps} steps, not {steps}",
            param="steps",
        )
    guidance = rules.default_guidance if request.guidance is None else request.guidance
    if guidance < 0:
        raise GatewayError(ErrorCode.INVALID_REQUEST, "guidance cannot be negative", param="guidance")
    if request.n > MAX_IMAGES_PER_REQUEST:
        raise GatewayError(ErrorCode.INVALID_REQUEST, f"at most {MAX_IMAGES_PER_REQUEST} images per request", param="n")
    if request.seed is not None and not 0 <= request.seed <= SEED_LIMIT - request.n:
        raise GatewayError(ErrorCode.INVALID_REQUEST, f"seed must be from 0 to {SEED_LIMIT - request.n}", param="seed")
    return Work(
        model=request.model,
        operation=request.operation,
        prompt=request.prompt or "",
        negative_prompt=request.negative_prompt or None,
        n=request.n,
        width=width,
        height=height,
        steps=steps,
        batch_pixels=rules.batch_pixels,
        alone=rules.batch_alone,
        guidance=float(guidance),
        seed=secrets.randbelow(MAX_SEED) if request.seed is None else request.seed,
        strength=rules.strength,
        image=image,
        mask=mask,
        output_format=request.output_format if request.output_format in OUTPUT_FORMATS else "png",  # type: ignore[arg-type]
        output_compression=request.output_compression,
    )


def _check_operation(request: ImageRequest, rules: ModelRules) -> None:
    if request.operation not in rules.operations:
        raise GatewayError(
            ErrorCode.OPERATION_NOT_SUPPORTED,
            f"model {rules.name!r} ({rules.family}) cannot do {request.operation.value}",
        )
    if request.operation is Operation.GENERATE and not (request.prompt or "").strip():
        raise GatewayError(ErrorCode.INVALID_PROMPT, "a generation needs a prompt", param="prompt")
    if request.operation is not Operation.GENERATE and not request.images:
        raise GatewayError(ErrorCode.INVALID_REQUEST, f"{request.operation.value} needs an input image", param="image")


def declared_size(data: bytes, field: str, max_pixels: int) -> tuple[int, int]:
    """The width and height an input image's header declares, within ``max_pixels``; nothing is decoded.

    A PNG's, JPEG's or WebP's header is read here; another's by Pillow, which opens a file
    without decoding it. ``invalid_request`` naming ``field`` when the header cannot be read,
    declares no pixel, or declares more than ``max_pixels`` (a decompression bomb: a few
    bytes that would decode to gigabytes).
    """
    size = image_dimensions(data) or webp_dimensions(data) or _pillow_header(data, field, max_pixels)
    width, height = size
    if width < 1 or height < 1:
        raise GatewayError(
            ErrorCode.INVALID_REQUEST, f"`{field}` declares {width}x{height} pixels: it holds no image", param=field
        )
    if width * height > max_pixels:
        raise _too_many_pixels(field, f"{width}x{height}, {width * height} pixels", max_pixels)
    return width, height


def webp_dimensions(data: bytes) -> tuple[int, int] | None:
    """Width and height from a WebP's first chunk (lossy ``VP8 ``, lossless ``VP8L``, extended ``VP8X``)."""
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":  # the canvas: 24 bits each, minus one
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L" and data[20] == 0x2F:  # 14 bits each, minus one, after the signature byte
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # a key frame's start code, then 14 bits each
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    return None


def _pillow_header(data: bytes, field: str, max_pixels: int) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(data)) as image:  # the header only: pixels are decoded by load()
            return image.size
    except Image.DecompressionBombError as exc:
        raise _too_many_pixels(field, "more pixels than any image decoded here", max_pixels) from exc
    except Exception as exc:  # any failure of Pillow's on the client's bytes is the client's
        raise GatewayError(
            ErrorCode.INVALID_REQUEST, f"`{field}` is not an image that can be read", param=field
        ) from exc


def _too_many_pixels(field: str, declared: str, max_pixels: int) -> GatewayError:
    return GatewayError(
        ErrorCode.INVALID_REQUEST,
        f"`{field}` declares {declared}; input images may have at most {max_pixels} pixels",
        param=field,
    )


def _size(request: ImageRequest, rules: ModelRules, found: tuple[int, int] | None) -> tuple[int, int]:
    """The size asked for, else the input image's (fitted to the rules) for an edit, else the model's default."""
    if request.width is None and request.height is None:
        return (rules.default_size, rules.default_size) if found is None else fit_size(*found, rules)
    width = rules.default_size if request.width is None else request.width
    height = rules.default_size if request.height is None else request.height
    step = rules.multiple
    if width < step or height < step or width % step or height % step:
        raise GatewayError(
            ErrorCode.INVALID_SIZE,
            f"model {rules.name!r} draws widths and heights in multiples of {step} pixels; {width}x{height} is not",
            param="size",
        )
    if width * height > rules.max_pixels:
        raise GatewayError(
            ErrorCode.INVALID_SIZE,
            f"model {rules.name!r} draws at most {rules.max_pixels} pixels an image; "
            f"{width}x{height} is {width * height}",
            param="size",
        )
    return width, height


def fit_size(width: int, height: int, rules: ModelRules) -> tuple[int, int]:
    """The largest size of about this shape that the rules allow: within max_pixels, sides in multiples."""
    scale = min(1.0, (rules.max_pixels / (width * height)) ** 0.5)
    step = rules.multiple
    return (max(step, int(width * scale) // step * step), max(step, int(height * scale) // step * step))
