"""The Melious dialect (OpenAI-compatible ``POST /v1/images/generations``), both ways."""

from __future__ import annotations

import time
from typing import Annotated, Literal

import msgspec

from schemas.canonical import (
    EnvironmentImpact,
    ErrorCode,
    GatewayError,
    GeneratedImage,
    ImageRequest,
    ImageResult,
    ResponseFormat,
)
from schemas.dialect import (
    NO_STREAM,
    PROMPT_RULE,
    Buffer,
    Endpoint,
    ErrorTable,
    code_for_status,
    parse_size,
    refuse_stream,
)

__all__ = ["ERRORS", "GENERATIONS", "MeliousGenerationRequest", "MeliousGenerationResponse"]

DEFAULT_MODEL = "flux-schnell"
MAX_N = 4
SIZES = ("512x512", "768x768", "1024x1024", "1024x768", "768x1024", "1280x720", "720x1280")

Size = Annotated[
    Literal["512x512", "768x768", "1024x1024", "1024x768", "768x1024", "1280x720", "720x1280"],
    msgspec.Meta(description="one of " + ", ".join(SIZES)),
]
DEFAULT_SIZE: Size = "1024x1024"
Prompt = Annotated[str, msgspec.Meta(min_length=1, pattern=r"\S", description=PROMPT_RULE)]


class MeliousGenerationRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The wire request of ``POST /v1/images/generations``."""

    prompt: Prompt
    model: str = DEFAULT_MODEL
    n: Annotated[int, msgspec.Meta(ge=1, le=MAX_N)] = 1
    size: Size = DEFAULT_SIZE
    response_format: Literal["url", "b64_json"] = "url"
    user: str | None = None
    # Not documented by this dialect: refused when true rather than silently ignored.
    stream: Annotated[bool, msgspec.Meta(description=NO_STREAM)] = False


class MeliousImage(msgspec.Struct, omit_defaults=True):
    """One entry of ``data``: ``{"url"}`` or ``{"b64_json"}``."""

    url: str | None = None
    b64_json: str | None = None


class MeliousEnvironmentImpact(msgspec.Struct):
    carbon_g_co2: float
    water_liters: float
    energy_kwh: float
    renewable_percent: float
    provider_id: str
    location: str


class MeliousGenerationResponse(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The wire response; ``environment_impact`` is omitted when the backend did not report one."""

    created: int
    data: list[MeliousImage]
    environment_impact: MeliousEnvironmentImpact | None = None


class Generations(Endpoint[MeliousGenerationRequest, MeliousGenerationResponse]):
    """``POST /v1/images/generations``."""

    dialect = "melious"
    path = "/v1/images/generations"
    max_n_per_call = MAX_N
    request_type = MeliousGenerationRequest
    response_type = MeliousGenerationResponse

    def to_canonical(self, wire: MeliousGenerationRequest) -> ImageRequest:
        refuse_stream(wire.stream, "Melious image generations")
        width, height = parse_size(wire.size)
        return ImageRequest(
            model=wire.model,
            prompt=wire.prompt,
            n=wire.n,
            width=width,
            height=height,
            response_format=ResponseFormat(wire.response_format),
            user=wire.user,
        )

    def from_canonical(self, request: ImageRequest) -> MeliousGenerationRequest:
        size = request.size or DEFAULT_SIZE
        if size not in SIZES:
            raise GatewayError(ErrorCode.INVALID_SIZE, f"Melious does not offer size {size}", param="size")
        if request.n > MAX_N:
            raise GatewayError(ErrorCode.INVALID_REQUEST, f"Melious makes at most {MAX_N} images", param="n")
        return MeliousGenerationRequest(
            prompt=request.prompt or "",
            model=request.model,
            n=request.n,
            size=size,  # type: ignore[arg-type]  # checked against SIZES above
            response_format=request.response_format.value,
            user=request.user,
        )

    def encode_result(self, result: ImageResult, request: ImageRequest) -> MeliousGenerationResponse:
        if request.response_format is ResponseFormat.B64_JSON:
            data = [MeliousImage(b64_json=image.as_json_b64()) for image in result.images]
        else:
            data = [MeliousImage(url=image.url) for image in result.images]
        impact = result.environment_impact
        return MeliousGenerationResponse(
            created=result.created,
            data=data,
            environment_impact=msgspec.convert(msgspec.to_builtins(impact), MeliousEnvironmentImpact)
            if impact
            else None,
        )

    def decode_result(self, wire: MeliousGenerationResponse, request: ImageRequest) -> ImageResult:
        impact = wire.environment_impact
        return ImageResult(
            images=[
                GeneratedImage(url=item.url, b64_json=item.b64_json, width=request.width, height=request.height)
                for item in wire.data
            ],
            created=wire.created or int(time.time()),
            model=request.model,
            environment_impact=msgspec.convert(msgspec.to_builtins(impact), EnvironmentImpact) if impact else None,
        )


GENERATIONS = Generations()


# --- errors ---


class MeliousErrorBody(msgspec.Struct):
    code: str
    message: str = ""


class MeliousError(msgspec.Struct):
    """``{"error": {"code": "AREA_DETAIL", "message": "..."}}``."""

    error: MeliousErrorBody


# The Melious document names three codes (BILLING_INSUFFICIENT_ENERGY, VALIDATION_INVALID_VALUE,
# INFERENCE_PROVIDER_ERROR); every invalid value (prompt and size too) is its VALIDATION_INVALID_VALUE.
# The others follow its AREA_DETAIL pattern for cases it has no code for (docs/errors.md).
CODES: dict[ErrorCode, str] = {
    ErrorCode.INVALID_REQUEST: "VALIDATION_INVALID_VALUE",
    ErrorCode.INVALID_PROMPT: "VALIDATION_INVALID_VALUE",
    ErrorCode.INVALID_SIZE: "VALIDATION_INVALID_VALUE",
    ErrorCode.CONTENT_POLICY: "POLICY_CONTENT_VIOLATION",
    ErrorCode.UNAUTHORIZED: "AUTH_INVALID_API_KEY",
    ErrorCode.MODEL_NOT_FOUND: "MODEL_NOT_FOUND",
    ErrorCode.OPERATION_NOT_SUPPORTED: "MODEL_OPERATION_UNSUPPORTED",
    ErrorCode.INSUFFICIENT_QUOTA: "BILLING_INSUFFICIENT_ENERGY",
    ErrorCode.RATE_LIMITED: "RATE_LIMIT_EXCEEDED",
    ErrorCode.UPSTREAM_ERROR: "INFERENCE_PROVIDER_ERROR",
    ErrorCode.UPSTREAM_TIMEOUT: "INFERENCE_TIMEOUT",
    ErrorCode.OVERLOADED: "INFERENCE_OVERLOADED",
    ErrorCode.INTERNAL: "INTERNAL_ERROR",
}
# Read back, a code several canonical codes share stands for the first of them (invalid_request).
_FROM_CODE = {wire: canonical for canonical, wire in reversed(CODES.items())}
_ERROR_DECODER = msgspec.json.Decoder(MeliousError)


class MeliousErrors(ErrorTable):
    """Melious's ``AREA_DETAIL`` codes both ways (docs/errors.md)."""

    def render(self, error: GatewayError) -> bytes:
        return msgspec.json.encode(MeliousError(MeliousErrorBody(code=CODES[error.code], message=error.message)))

    def parse(self, status: int, body: Buffer, retry_after: float | None = None) -> GatewayError:
        try:
            wire = _ERROR_DECODER.decode(body).error
        except (msgspec.ValidationError, msgspec.DecodeError):
            return GatewayError(code_for_status(status), f"Melious answered {status}", retry_after=retry_after)
        code = _FROM_CODE.get(wire.code, code_for_status(status))
        return GatewayError(code, wire.message or wire.code, retry_after=retry_after)


ERRORS = MeliousErrors()
