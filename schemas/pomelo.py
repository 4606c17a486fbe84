"""The Pomelo dialect, both ways: ``POST /api/v1/midjourney/generate`` and ``POST /api/v1/flux.1``.

The two endpoints share nothing but the error envelope. Pomelo answers URLs only, so
every request a Pomelo client makes wants URLs back. Flux.1 speaks aspect ratios, not
pixels: the long side is 1024 and the short side the nearest multiple of 64.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import time
from typing import Annotated

import msgspec

from schemas.canonical import (
    ErrorCode,
    GatewayError,
    GeneratedImage,
    ImageRequest,
    ImageResult,
    Operation,
    ResponseFormat,
)
from schemas.dialect import NO_STREAM, PROMPT_RULE, Buffer, Endpoint, ErrorTable, code_for_status, refuse_stream
from schemas.nebulablock import CODES

__all__ = [
    "ERRORS",
    "FLUX",
    "MIDJOURNEY",
    "PomeloFluxRequest",
    "PomeloFluxResponse",
    "PomeloMidjourneyRequest",
    "PomeloMidjourneyResponse",
    "aspect_ratio_for_size",
    "size_for_aspect_ratio",
]

DEFAULT_MIDJOURNEY_MODEL = "5"
DEFAULT_SIDE = 512
MIN_SIDE = 64
MAX_SIDE = 2048
MAX_OUTPUTS = 4

FLUX_MODEL = "flux.1"
DEFAULT_STEPS = 30
MAX_STEPS = 50
DEFAULT_ASPECT_RATIO = "1:1"
LONG_SIDE = 1024
SIDE_STEP = 64

Prompt = Annotated[str, msgspec.Meta(min_length=1, pattern=r"\S", description=PROMPT_RULE)]
Side = Annotated[int, msgspec.Meta(ge=MIN_SIDE, le=MAX_SIDE)]
# Two positive integers without leading zeros, e.g. "16:9".
AspectRatio = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[1-9][0-9]{0,3}:[1-9][0-9]{0,3}$",
        description="a ratio WIDTH:HEIGHT of whole numbers, e.g. 1:1, 16:9, 4:3",
    ),
]


def _require_generate(request: ImageRequest) -> None:
    """Pomelo only draws from a prompt; an edit or variation cannot be sent to it."""
    if request.operation is not Operation.GENERATE:
        raise GatewayError(ErrorCode.OPERATION_NOT_SUPPORTED, f"Pomelo does not support {request.operation.value}")


# --- Midjourney ---


class PomeloMidjourneyRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The wire request of ``POST /api/v1/midjourney/generate``."""

    prompt: Prompt
    style: str | None = None
    width: Side = DEFAULT_SIDE
    height: Side = DEFAULT_SIDE
    model: Annotated[str, msgspec.Meta(min_length=1)] = DEFAULT_MIDJOURNEY_MODEL
    num_outputs: Annotated[int, msgspec.Meta(ge=1, le=MAX_OUTPUTS)] = 1
    # Not documented by this dialect: refused when true rather than silently ignored.
    stream: Annotated[bool, msgspec.Meta(description=NO_STREAM)] = False


class PomeloMidjourneyImage(msgspec.Struct, kw_only=True):
    """One entry of ``images``; ``created_at`` is ISO 8601 UTC (``2023-06-15T10:30:45Z``)."""

    url: str
    id: str = ""
    created_at: str = ""


class PomeloMidjourneyResponse(msgspec.Struct, kw_only=True):
    """The wire response of the Midjourney endpoint, fields in the documented order."""

    status: str = "success"
    images: list[PomeloMidjourneyImage]
    prompt: str = ""
    model: str = DEFAULT_MIDJOURNEY_MODEL


def _iso_utc(timestamp: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def _timestamp(iso: str) -> int | None:
    try:
        moment = datetime.datetime.fromisoformat(iso)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp())


def _image_id(url: str, index: int) -> str:
    """A stable ``img_…`` id: the same URL at the same place always gets the same id."""
    return "img_" + hashlib.blake2b(f"{index}:{url}".encode(), digest_size=6).hexdigest()


class Midjourney(Endpoint[PomeloMidjourneyRequest, PomeloMidjourneyResponse]):
    """``POST /api/v1/midjourney/generate``: ``model`` is the Midjourney version (``"5"``)."""

    dialect = "pomelo"
    path = "/api/v1/midjourney/generate"
    max_n_per_call = 4
    request_type = PomeloMidjourneyRequest
    response_type = PomeloMidjourneyResponse
    field_names = {"n": "num_outputs", "size": "width/height"}

    def to_canonical(self, wire: PomeloMidjourneyRequest) -> ImageRequest:
        refuse_stream(wire.stream, "Pomelo's Midjourney endpoint")
        return ImageRequest(
            model=wire.model,
            prompt=wire.prompt,
            n=wire.num_outputs,
            width=wire.width,
            height=wire.height,
            style=wire.style,
            response_format=ResponseFormat.URL,
        )

    def from_canonical(self, request: ImageRequest) -> PomeloMidjourneyRequest:
        _require_generate(request)
        width, height = request.width or DEFAULT_SIDE, request.height or DEFAULT_SIDE
        if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
            raise GatewayError(
                ErrorCode.INVALID_SIZE,
                f"Midjourney draws {MIN_SIDE} to {MAX_SIDE} pixels a side, not {width}x{height}",
                param="size",
            )
        if request.n > MAX_OUTPUTS:
            raise GatewayError(ErrorCode.INVALID_REQUEST, f"Midjourney makes at most {MAX_OUTPUTS} images", param="n")
        return PomeloMidjourneyRequest(
            prompt=request.prompt or "",
            style=request.style,
            width=width,
            height=height,
            model=request.model,
            num_outputs=request.n,
        )

    def encode_result(self, result: ImageResult, request: ImageRequest) -> PomeloMidjourneyResponse:
        created_at = _iso_utc(result.created)
        images = [
            PomeloMidjourneyImage(url=image.url or "", id=_image_id(image.url or "", index), created_at=created_at)
            for index, image in enumerate(result.images)
        ]
        return PomeloMidjourneyResponse(images=images, prompt=request.prompt or "", model=request.model)

    def decode_result(self, wire: PomeloMidjourneyResponse, request: ImageRequest) -> ImageResult:
        width, height = request.width or DEFAULT_SIDE, request.height or DEFAULT_SIDE
        created = _timestamp(wire.images[0].created_at) if wire.images else None
        return ImageResult(
            images=[GeneratedImage(url=item.url, width=width, height=height) for item in wire.images],
            created=created or int(time.time()),
            model=request.model,
        )


MIDJOURNEY = Midjourney()


# --- Flux.1 ---


def size_for_aspect_ratio(ratio: str) -> tuple[int, int]:
    """``"16:9"`` → ``(1024, 576)``: the long side is 1024, the short side the nearest multiple of 64.

    ``ratio`` is already known to be ``W:H`` with positive integers (``AspectRatio``).
    """
    wide, _, tall = ratio.partition(":")
    across, down = int(wide), int(tall)
    long, short = max(across, down), min(across, down)
    # short / long * 1024 / 64, rounded half up, in integers.
    steps = (2 * short * (LONG_SIDE // SIDE_STEP) + long) // (2 * long)
    short_side = max(SIDE_STEP, steps * SIDE_STEP)
    return (LONG_SIDE, short_side) if across >= down else (short_side, LONG_SIDE)


def aspect_ratio_for_size(width: int | None, height: int | None) -> str:
    """``(1024, 576)`` → ``"16:9"``, the reduced ratio; an unknown size is the default ``"1:1"``."""
    if not width or not height:
        return DEFAULT_ASPECT_RATIO
    divisor = math.gcd(width, height)
    return f"{width // divisor}:{height // divisor}"


class PomeloFluxRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The wire request of ``POST /api/v1/flux.1``."""

    prompt: Prompt
    negative_prompt: str | None = None
    style: str | None = None
    seed: int | None = None
    steps: Annotated[int, msgspec.Meta(ge=1, le=MAX_STEPS)] = DEFAULT_STEPS
    aspect_ratio: AspectRatio = DEFAULT_ASPECT_RATIO
    # Not documented by this dialect: refused when true rather than silently ignored.
    stream: Annotated[bool, msgspec.Meta(description=NO_STREAM)] = False


class PomeloFluxImage(msgspec.Struct, kw_only=True):
    url: str
    width: int
    height: int


class PomeloFluxResponse(msgspec.Struct, kw_only=True):
    """The wire response of Flux.1; ``seed`` is always the seed that was used."""

    id: str
    created: int
    images: list[PomeloFluxImage]
    prompt: str = ""
    model: str = FLUX_MODEL
    seed: int
    status: str = "complete"


def _generation_id(result: ImageResult) -> str:
    """``gen_…``: the backend's id under Pomelo's prefix, or one derived from the result."""
    if result.id:
        return result.id if result.id.startswith("gen_") else f"gen_{result.id}"
    urls = "\n".join(image.url or "" for image in result.images)
    return "gen_" + hashlib.blake2b(f"{result.created}\n{urls}".encode(), digest_size=6).hexdigest()


def _seed_used(result: ImageResult, request: ImageRequest) -> int:
    """The result's seed, else the first image's, else the request's; 0 only when none is known."""
    first_image_seed = result.images[0].seed if result.images else None
    for seed in (result.seed, first_image_seed, request.seed):
        if seed is not None:
            return seed
    return 0


class Flux(Endpoint[PomeloFluxRequest, PomeloFluxResponse]):
    """``POST /api/v1/flux.1``: one image per request; the endpoint is the model (``flux.1``)."""

    dialect = "pomelo"
    path = "/api/v1/flux.1"
    request_type = PomeloFluxRequest
    response_type = PomeloFluxResponse
    field_names = {"size": "aspect_ratio"}

    def to_canonical(self, wire: PomeloFluxRequest) -> ImageRequest:
        refuse_stream(wire.stream, "Pomelo's Flux endpoint")
        width, height = size_for_aspect_ratio(wire.aspect_ratio)
        return ImageRequest(
            model=FLUX_MODEL,
            prompt=wire.prompt,
            negative_prompt=wire.negative_prompt,
            width=width,
            height=height,
            steps=wire.steps,
            seed=wire.seed,
            style=wire.style,
            response_format=ResponseFormat.URL,
        )

    def from_canonical(self, request: ImageRequest) -> PomeloFluxRequest:
        _require_generate(request)
        if request.n > 1:
            raise GatewayError(ErrorCode.INVALID_REQUEST, "Flux.1 makes one image per request", param="n")
        steps = DEFAULT_STEPS if request.steps is None else request.steps
        if not 1 <= steps <= MAX_STEPS:  # the endpoint's documented range: told to the client as it is (public)
            raise GatewayError(
                ErrorCode.INVALID_REQUEST,
                f"Flux.1 takes 1 to {MAX_STEPS} steps, not {steps}",
                param="steps",
                public=True,
            )
        return PomeloFluxRequest(
            prompt=request.prompt or "",
            negative_prompt=request.negative_prompt,
            style=request.style,
            seed=request.seed,
            steps=steps,
            aspect_ratio=aspect_ratio_for_size(request.width, request.height),
        )

    def encode_result(self, result: ImageResult, request: ImageRequest) -> PomeloFluxResponse:
        fallback_width, fallback_height = request.width or LONG_SIDE, request.height or LONG_SIDE
        images = [
            PomeloFluxImage(
                url=image.url or "", width=image.width or fallback_width, height=image.height or fallback_height
            )
            for image in result.images
        ]
        return PomeloFluxResponse(
            id=_generation_id(result),
            created=result.created,
            images=images,
            prompt=request.prompt or "",
            seed=_seed_used(result, request),
        )

    def decode_result(self, wire: PomeloFluxResponse, request: ImageRequest) -> ImageResult:
        return ImageResult(
            images=[
                GeneratedImage(url=item.url, width=item.width, height=item.height, seed=wire.seed)
                for item in wire.images
            ],
            created=wire.created or int(time.time()),
            model=request.model,
            id=wire.id,
            seed=wire.seed,
        )


FLUX = Flux()


# --- errors ---


class PomeloErrorBody(msgspec.Struct, kw_only=True):
    code: str
    message: str = ""


class PomeloError(msgspec.Struct, kw_only=True):
    """``{"status": "error", "error": {"code": "invalid_size", "message": "..."}}``."""

    status: str = "error"
    error: PomeloErrorBody


_FROM_CODE = {wire: canonical for canonical, wire in CODES.items()}
_ERROR_DECODER = msgspec.json.Decoder(PomeloError)


class PomeloErrors(ErrorTable):
    """Pomelo's error codes both ways: NebulaBlock's list, without ``details`` (docs/errors.md)."""

    def render(self, error: GatewayError) -> bytes:
        return msgspec.json.encode(PomeloError(error=PomeloErrorBody(code=CODES[error.code], message=error.message)))

    def parse(self, status: int, body: Buffer, retry_after: float | None = None) -> GatewayError:
        try:
            wire = _ERROR_DECODER.decode(body).error
        except (msgspec.ValidationError, msgspec.DecodeError):
            return GatewayError(code_for_status(status), f"Pomelo answered {status}", retry_after=retry_after)
        code = _FROM_CODE.get(wire.code, code_for_status(status))
        return GatewayError(code, wire.message or wire.code, retry_after=retry_after)


ERRORS = PomeloErrors()
