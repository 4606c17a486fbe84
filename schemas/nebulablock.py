"""The NebulaBlock dialect, both ways, in its two API generations.

``SERVERLESS`` is ``/api/v1/images/generation``: pixel sizes, steps and guidance, an
optional base64 ``image``/``mask`` for image-to-image and inpainting, and base64 answers
with per-image inference timings. ``V1`` is ``/v1/images/generate``: OpenAI-like
``n``/``size``/``quality``/``style`` and URL or base64 answers. Both share one error
envelope, whose codes Pomelo also speaks.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

import msgspec

from schemas.canonical import (
    ErrorCode,
    GatewayError,
    GeneratedImage,
    ImageRequest,
    ImageResult,
    InputImage,
    Operation,
    ResponseFormat,
    Timings,
    Usage,
)
from schemas.dialect import (
    NO_STREAM,
    PROMPT_RULE,
    Buffer,
    Endpoint,
    ErrorTable,
    b64_image,
    code_for_status,
    image_dimensions,
    parse_size,
    refuse_stream,
)

__all__ = [
    "CODES",
    "ERRORS",
    "SERVERLESS",
    "V1",
    "NebulaBlockServerlessRequest",
    "NebulaBlockServerlessResponse",
    "NebulaBlockV1Request",
    "NebulaBlockV1Response",
]

MIN_SIDE = 64
MAX_SIDE = 2048
MAX_N = 10
GENERATED_MESSAGE = "Image generated successfully"

Prompt = Annotated[str, msgspec.Meta(min_length=1, pattern=r"\S", description=PROMPT_RULE)]
Model = Annotated[str, msgspec.Meta(min_length=1)]
Side = Annotated[int, msgspec.Meta(ge=MIN_SIDE, le=MAX_SIDE)]
SizeText = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[0-9]{1,5}x[0-9]{1,5}$",
        description=f"WIDTHxHEIGHT in pixels, {MIN_SIDE} to {MAX_SIDE} a side, e.g. 1024x1024",
    ),
]
B64Image = Annotated[str, msgspec.Meta(description="a base64 JPEG or PNG image")]
Quality = Literal["standard", "hd"]
Style = Literal["natural", "vivid", "artistic"]
QUALITIES: tuple[Quality, ...] = ("standard", "hd")
STYLES: tuple[Style, ...] = ("natural", "vivid", "artistic")


def _check_size(width: int | None, height: int | None) -> None:
    """Both generations draw 64 to 2048 pixels a side; an unset side is the model's default."""
    for side in (width, height):
        if side is not None and not MIN_SIDE <= side <= MAX_SIDE:
            raise GatewayError(
                ErrorCode.INVALID_SIZE,
                f"NebulaBlock draws {MIN_SIDE} to {MAX_SIDE} pixels a side, not {width}x{height}",
                param="size",
            )


def _check_n(n: int, most: int) -> None:
    if n > most:
        raise GatewayError(ErrorCode.INVALID_REQUEST, f"NebulaBlock makes at most {most} images here", param="n")


def _b64(image: InputImage | None) -> str | None:
    """The base64 text NebulaBlock takes: a client's text as it came, else the bytes encoded once."""
    return None if image is None else image.as_b64()


# --- serverless: /api/v1/images/generation ---


class NebulaBlockServerlessRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The wire request of ``/api/v1/images/generation``; ``image``/``mask`` are base64 JPEG or PNG."""

    model: Model
    prompt: Prompt
    num_steps: Annotated[int, msgspec.Meta(ge=1)] | None = None
    guidance_scale: Annotated[float, msgspec.Meta(ge=0)] | None = None
    width: Side | None = None
    height: Side | None = None
    negative_prompt: str | None = None
    image: B64Image | None = None
    mask: B64Image | None = None
    # Not documented by this dialect: refused when true rather than silently ignored.
    stream: Annotated[bool, msgspec.Meta(description=NO_STREAM)] = False


class NebulaBlockTimings(msgspec.Struct, kw_only=True):
    inference: float | None = None


class NebulaBlockServerlessImage(msgspec.Struct, kw_only=True):
    """One entry of ``data``, fields in the documented order."""

    timings: NebulaBlockTimings = msgspec.field(default_factory=NebulaBlockTimings)
    index: int = 0
    b64_json: str


class NebulaBlockServerlessResponse(msgspec.Struct, kw_only=True):
    """The serverless wire response: always base64, one timing per image."""

    model: str = ""
    object: str = "list"
    data: list[NebulaBlockServerlessImage]
    message: str = GENERATED_MESSAGE
    status: str = "success"


class ServerlessImages(Endpoint[NebulaBlockServerlessRequest, NebulaBlockServerlessResponse]):
    """``/api/v1/images/generation``: text-to-image, or an edit when ``image`` is sent."""

    dialect = "nebulablock"
    path = "/api/v1/images/generation"
    request_type = NebulaBlockServerlessRequest
    response_type = NebulaBlockServerlessResponse
    field_names = {"steps": "num_steps", "guidance": "guidance_scale", "size": "width/height"}

    def to_canonical(self, wire: NebulaBlockServerlessRequest) -> ImageRequest:
        refuse_stream(wire.stream, "NebulaBlock's serverless images")
        if wire.mask is not None and wire.image is None:
            raise GatewayError(ErrorCode.INVALID_REQUEST, "`mask` needs an `image` to paint into", param="mask")
        images = () if wire.image is None else (b64_image(wire.image, "image"),)
        return ImageRequest(
            model=wire.model,
            prompt=wire.prompt,
            operation=Operation.EDIT if images else Operation.GENERATE,
            negative_prompt=wire.negative_prompt,
            width=wire.width,
            height=wire.height,
            steps=wire.num_steps,
            guidance=wire.guidance_scale,
            response_format=ResponseFormat.B64_JSON,
            images=images,
            mask=None if wire.mask is None else b64_image(wire.mask, "mask"),
        )

    def from_canonical(self, request: ImageRequest) -> NebulaBlockServerlessRequest:
        if request.operation is Operation.VARIATION:
            raise GatewayError(ErrorCode.OPERATION_NOT_SUPPORTED, "NebulaBlock does not make variations")
        edit = request.operation is Operation.EDIT
        if edit and len(request.images) != 1:
            raise GatewayError(ErrorCode.INVALID_REQUEST, "NebulaBlock edits exactly one image", param="image")
        _check_n(request.n, 1)
        _check_size(request.width, request.height)
        return NebulaBlockServerlessRequest(
            model=request.model,
            prompt=request.prompt or "",
            num_steps=request.steps,
            guidance_scale=request.guidance,
            width=request.width,
            height=request.height,
            negative_prompt=request.negative_prompt,
            image=_b64(request.images[0]) if edit else None,
            mask=_b64(request.mask) if edit else None,
        )

    def encode_result(self, result: ImageResult, request: ImageRequest) -> NebulaBlockServerlessResponse:
        # The backend reports one time for the whole batch; each image carries it.
        inference = result.timings.inference if result.timings.inference is not None else 0.0
        data = [
            NebulaBlockServerlessImage(
                timings=NebulaBlockTimings(inference=inference), index=index, b64_json=image.as_json_b64() or ""
            )
            for index, image in enumerate(result.images)
        ]
        return NebulaBlockServerlessResponse(model=request.model, data=data)

    def decode_result(self, wire: NebulaBlockServerlessResponse, request: ImageRequest) -> ImageResult:
        items = sorted(wire.data, key=lambda item: item.index)
        times = [item.timings.inference for item in items if item.timings.inference is not None]
        return ImageResult(
            images=[
                GeneratedImage(b64_json=item.b64_json, width=request.width, height=request.height) for item in items
            ],
            created=int(time.time()),
            model=request.model,
            timings=Timings(inference=max(times) if times else None),
        )


SERVERLESS = ServerlessImages()


# --- v1: /v1/images/generate ---


class NebulaBlockV1Request(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The wire request of ``/v1/images/generate``."""

    model: Model
    prompt: Prompt
    n: Annotated[int, msgspec.Meta(ge=1, le=MAX_N)] = 1
    size: SizeText | None = None
    quality: Quality = "standard"
    style: Style = "natural"
    negative_prompt: str | None = None
    response_format: Literal["url", "b64_json"] = "url"
    # Not documented by this dialect: refused when true rather than silently ignored.
    stream: Annotated[bool, msgspec.Meta(description=NO_STREAM)] = False


class NebulaBlockV1Image(msgspec.Struct, kw_only=True):
    """``{"url", "b64_json"}``: both keys always present, the unused one null."""

    url: str | None = None
    b64_json: str | None = None


class NebulaBlockV1Usage(msgspec.Struct, kw_only=True):
    images_generated: int
    resolution: str = ""


class NebulaBlockV1Data(msgspec.Struct, kw_only=True):
    images: list[NebulaBlockV1Image]
    usage: NebulaBlockV1Usage


class NebulaBlockV1Response(msgspec.Struct, kw_only=True):
    """The v1 wire response: ``{"status", "data": {"images", "usage"}}``."""

    status: str = "success"
    data: NebulaBlockV1Data


def _resolution(result: ImageResult, request: ImageRequest) -> str:
    """``WxH`` of the first image as far as it is known, else of the request; empty when neither is."""
    first = result.images[0] if result.images else None
    if first is not None and first.width and first.height:
        return f"{first.width}x{first.height}"
    if request.size is not None:
        return request.size
    local = first.as_bytes() if first is not None else None
    dimensions = image_dimensions(local) if local else None
    return f"{dimensions[0]}x{dimensions[1]}" if dimensions else ""


def _size_of(resolution: str, request: ImageRequest) -> tuple[int | None, int | None]:
    try:
        return parse_size(resolution)
    except GatewayError:
        return request.width, request.height


class V1Images(Endpoint[NebulaBlockV1Request, NebulaBlockV1Response]):
    """``/v1/images/generate``: text-to-image only."""

    dialect = "nebulablock"
    path = "/v1/images/generate"
    max_n_per_call = 10
    request_type = NebulaBlockV1Request
    response_type = NebulaBlockV1Response

    def to_canonical(self, wire: NebulaBlockV1Request) -> ImageRequest:
        refuse_stream(wire.stream, "NebulaBlock's v1 images")
        width, height = parse_size(wire.size) if wire.size is not None else (None, None)
        _check_size(width, height)
        return ImageRequest(
            model=wire.model,
            prompt=wire.prompt,
            negative_prompt=wire.negative_prompt,
            n=wire.n,
            width=width,
            height=height,
            style=wire.style,
            quality=wire.quality,
            response_format=ResponseFormat(wire.response_format),
        )

    def from_canonical(self, request: ImageRequest) -> NebulaBlockV1Request:
        if request.operation is not Operation.GENERATE:
            raise GatewayError(
                ErrorCode.OPERATION_NOT_SUPPORTED, f"NebulaBlock v1 does not support {request.operation.value}"
            )
        _check_n(request.n, MAX_N)
        _check_size(request.width, request.height)
        # Values from other dialects (quality "auto", style "anime") fall back on NebulaBlock's defaults.
        return NebulaBlockV1Request(
            model=request.model,
            prompt=request.prompt or "",
            n=request.n,
            size=request.size,
            quality=request.quality if request.quality in QUALITIES else "standard",  # type: ignore[arg-type]
            style=request.style if request.style in STYLES else "natural",  # type: ignore[arg-type]
            negative_prompt=request.negative_prompt,
            response_format=request.response_format.value,
        )

    def encode_result(self, result: ImageResult, request: ImageRequest) -> NebulaBlockV1Response:
        if request.response_format is ResponseFormat.B64_JSON:
            images = [NebulaBlockV1Image(b64_json=image.as_json_b64()) for image in result.images]
        else:
            images = [NebulaBlockV1Image(url=image.url) for image in result.images]
        usage = NebulaBlockV1Usage(images_generated=len(images), resolution=_resolution(result, request))
        return NebulaBlockV1Response(data=NebulaBlockV1Data(images=images, usage=usage))

    def decode_result(self, wire: NebulaBlockV1Response, request: ImageRequest) -> ImageResult:
        width, height = _size_of(wire.data.usage.resolution, request)
        return ImageResult(
            images=[
                GeneratedImage(url=item.url, b64_json=item.b64_json, width=width, height=height)
                for item in wire.data.images
            ],
            created=int(time.time()),
            model=request.model,
            usage=Usage(images_generated=wire.data.usage.images_generated),
        )


V1 = V1Images()


# --- errors (both generations; Pomelo speaks the same codes) ---


class NebulaBlockErrorDetails(msgspec.Struct, kw_only=True):
    reason: str = ""


class NebulaBlockErrorBody(msgspec.Struct, kw_only=True):
    code: str
    message: str = ""
    details: NebulaBlockErrorDetails | None = None


class NebulaBlockError(msgspec.Struct, kw_only=True):
    """``{"status": "error", "error": {"code", "message", "details": {"reason"}}}``."""

    status: str = "error"
    error: NebulaBlockErrorBody


CODES: dict[ErrorCode, str] = {
    ErrorCode.INVALID_REQUEST: "invalid_request",
    ErrorCode.INVALID_PROMPT: "invalid_prompt",
    ErrorCode.INVALID_SIZE: "invalid_size",
    ErrorCode.CONTENT_POLICY: "content_policy_violation",
    ErrorCode.UNAUTHORIZED: "unauthorized",
    ErrorCode.MODEL_NOT_FOUND: "model_not_found",
    ErrorCode.OPERATION_NOT_SUPPORTED: "operation_not_supported",
    ErrorCode.INSUFFICIENT_QUOTA: "insufficient_quota",
    ErrorCode.RATE_LIMITED: "rate_limit_exceeded",
    ErrorCode.UPSTREAM_ERROR: "upstream_error",
    ErrorCode.UPSTREAM_TIMEOUT: "timeout",
    ErrorCode.OVERLOADED: "overloaded",
    ErrorCode.INTERNAL: "internal_error",
}

# ``details.reason``: the short descriptions of NebulaBlock's own error-code table, and ours alike.
REASONS: dict[ErrorCode, str] = {
    ErrorCode.INVALID_REQUEST: "Request has a missing or invalid value",
    ErrorCode.INVALID_PROMPT: "Prompt is empty or invalid",
    ErrorCode.INVALID_SIZE: "Requested size not supported",
    ErrorCode.CONTENT_POLICY: "Prompt violates content policy",
    ErrorCode.UNAUTHORIZED: "Missing or invalid API key",
    ErrorCode.MODEL_NOT_FOUND: "Model does not exist",
    ErrorCode.OPERATION_NOT_SUPPORTED: "Model does not support this operation",
    ErrorCode.INSUFFICIENT_QUOTA: "Not enough credits or quota",
    ErrorCode.RATE_LIMITED: "Too many requests",
    ErrorCode.UPSTREAM_ERROR: "The inference backend failed",
    ErrorCode.UPSTREAM_TIMEOUT: "The inference backend timed out",
    ErrorCode.OVERLOADED: "The inference backend is overloaded",
    ErrorCode.INTERNAL: "Internal error",
}
_FROM_CODE = {wire: canonical for canonical, wire in CODES.items()}
_ERROR_DECODER = msgspec.json.Decoder(NebulaBlockError)


def _reason(error: GatewayError) -> str:
    reason = REASONS[error.code]
    return f"{reason} (`{error.param}`)" if error.param else reason


class NebulaBlockErrors(ErrorTable):
    """NebulaBlock's error codes both ways (docs/errors.md), with a short ``details.reason``."""

    def render(self, error: GatewayError) -> bytes:
        body = NebulaBlockErrorBody(
            code=CODES[error.code], message=error.message, details=NebulaBlockErrorDetails(reason=_reason(error))
        )
        return msgspec.json.encode(NebulaBlockError(error=body))

    def parse(self, status: int, body: Buffer, retry_after: float | None = None) -> GatewayError:
        try:
            wire = _ERROR_DECODER.decode(body).error
        except (msgspec.ValidationError, msgspec.DecodeError):
            return GatewayError(code_for_status(status), f"NebulaBlock answered {status}", retry_after=retry_after)
        code = _FROM_CODE.get(wire.code, code_for_status(status))
        reason = wire.details.reason if wire.details is not None else ""
        return GatewayError(code, wire.message or reason or wire.code, retry_after=retry_after)


ERRORS = NebulaBlockErrors()
