"""OpenAI's Images API spoken outbound: any OpenAI-compatible server as a provider (``kind: openai``).

The wire shapes are those of OpenAI's published OpenAPI document (``CreateImageRequest``,
``CreateImageEditRequest``, ``CreateImageVariationRequest``, ``ImagesResponse``, the
``image_generation.*`` and ``image_edit.*`` stream events) and its error envelope
``{"error": {"message", "type", "param", "code"}}``. OpenAI itself, SGLang's and vLLM-Omni's
diffusion servers, LocalAI, Portkey or another image-gateway answer in them.

What a provider entry declares decides what is sent (``WireSettings``): the ``response_format``
to ask for (or none: OpenAI's GPT image models refuse the field and always answer base64), and
which of the documented extensions (``seed``, ``steps``, ``guidance``, ``negative_prompt``) the
server takes, under which names. A request carrying an extension the server does not take is
sent without it, as every other provider kind does with a field its API lacks (docs/operations.md).

This module speaks the dialect outbound only: the inbound root ``/v1`` family is
``schemas.openai``. Answers are read leniently (a compatible server may write ``null`` where
OpenAI leaves a field out); requests are written exactly (unset fields left out).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, TypeVar

import msgspec

from schemas import nebul
from schemas.canonical import (
    ErrorCode,
    GatewayError,
    GeneratedImage,
    ImageRequest,
    ImageResult,
    Operation,
    Usage,
)
from schemas.dialect import BodyKind, Buffer, Endpoint, ErrorTable, code_for_status, sniff_image

__all__ = [
    "DEFAULT_EXTENSION_NAMES",
    "EDITS",
    "ERRORS",
    "EXTENSIONS",
    "GENERATIONS",
    "VARIATIONS",
    "CreateImageEditRequest",
    "CreateImageRequest",
    "CreateImageVariationRequest",
    "ImagesResponse",
    "OpenAIEndpoint",
    "StreamEvent",
    "WireSettings",
    "endpoint_for",
    "error_from_envelope",
    "image_of_event",
]

Extension = Literal["seed", "steps", "guidance", "negative_prompt"]
EXTENSIONS: tuple[Extension, ...] = ("seed", "steps", "guidance", "negative_prompt")
# The names vLLM-Omni's and SGLang's image servers take them under; a provider entry may rename each.
DEFAULT_EXTENSION_NAMES: Mapping[Extension, str] = {
    "seed": "seed",
    "steps": "num_inference_steps",
    "guidance": "guidance_scale",
    "negative_prompt": "negative_prompt",
}
ResponseFormatName = Literal["url", "b64_json"]
OUTPUT_FORMATS = frozenset({"png", "jpeg", "webp"})
STYLES = frozenset({"vivid", "natural"})  # dall-e-3's; another dialect's style (anime, raw, ...) is not sent
MEDIA_TYPES: Mapping[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
MAX_PARTIAL_IMAGES = 3
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
_SIZE = re.compile(r"^([1-9]\d{0,4})x([1-9]\d{0,4})$")


class WireSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What one provider entry says about the server behind it (``gateway.config.OpenAIProvider``)."""

    # The ``response_format`` sent with every request; None: never sent (GPT image models answer base64).
    response_format: ResponseFormatName | None = "b64_json"
    # Documented extension (canonical name) → the server's field for it; only these are sent.
    extensions: Mapping[str, str] = {}
    max_n_per_call: int = 10


# --------------------------------------------------------------------------- requests


class CreateImageRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``POST /images/generations`` (JSON), the document's ``CreateImageRequest``: unset fields left out."""

    prompt: str
    model: str | None = None
    n: int | None = None
    quality: str | None = None
    response_format: ResponseFormatName | None = None
    output_format: str | None = None
    output_compression: int | None = None
    stream: bool | None = None
    partial_images: int | None = None
    size: str | None = None
    background: str | None = None
    style: str | None = None
    user: str | None = None


class CreateImageEditRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``POST /images/edits`` (multipart), the document's ``CreateImageEditRequest``."""

    image: list[bytes]
    prompt: str
    mask: bytes | None = None
    background: str | None = None
    model: str | None = None
    n: int | None = None
    size: str | None = None
    response_format: ResponseFormatName | None = None
    output_format: str | None = None
    output_compression: int | None = None
    user: str | None = None
    stream: bool | None = None
    partial_images: int | None = None
    quality: str | None = None


class CreateImageVariationRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``POST /images/variations`` (multipart), the document's ``CreateImageVariationRequest``: one image."""

    image: bytes
    model: str | None = None
    n: int | None = None
    response_format: ResponseFormatName | None = None
    size: str | None = None
    user: str | None = None


# --------------------------------------------------------------------------- answers


class Image(msgspec.Struct, kw_only=True):
    """One entry of ``data``: ``b64_json`` or ``url``, and dall-e-3's ``revised_prompt``."""

    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class InputTokensDetails(msgspec.Struct, kw_only=True):
    text_tokens: int = 0
    image_tokens: int = 0


class ImagesUsage(msgspec.Struct, kw_only=True):
    """``usage`` (``ImageGenUsage``, ``ImagesUsage``): GPT image models count tokens; others may leave it out."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    input_tokens_details: InputTokensDetails | None = None


class ImagesResponse(msgspec.Struct, kw_only=True):
    """The document's ``ImagesResponse`` (only ``created`` is required there)."""

    created: int = 0
    data: list[Image] | None = None
    background: str | None = None
    output_format: str | None = None
    size: str | None = None
    quality: str | None = None
    usage: ImagesUsage | None = None


class ErrorBody(msgspec.Struct, kw_only=True):
    """The inside of OpenAI's error envelope; compatible servers leave out keys, or write ``code`` as a number."""

    message: str | None = None
    type: str | None = None
    param: str | None = None
    code: str | int | None = None


class ErrorEnvelope(msgspec.Struct, kw_only=True):
    """``{"error": {...}}``; older vLLM servers write the four fields at the top level instead."""

    error: ErrorBody | None = None
    message: str | None = None
    type: str | None = None
    param: str | None = None
    code: str | int | None = None


class StreamEvent(msgspec.Struct, kw_only=True):
    """One ``data:`` line of a streamed answer: a partial image, the completed image, or an ``error``."""

    type: str = ""
    b64_json: str | None = None
    partial_image_index: int | None = None
    created_at: int | None = None
    size: str | None = None
    quality: str | None = None
    background: str | None = None
    output_format: str | None = None
    usage: ImagesUsage | None = None
    error: ErrorBody | None = None


def usage_of(usage: ImagesUsage | None, images: int) -> Usage:
    """OpenAI's token counts in canonical terms: the input tokens are the prompt's."""
    if usage is None:
        return Usage(images_generated=images)
    total = max(usage.total_tokens, usage.input_tokens + usage.output_tokens)
    return Usage(prompt_tokens=usage.input_tokens, total_tokens=total, images_generated=images)


def _dimensions(size: str | None, request: ImageRequest) -> tuple[int | None, int | None]:
    """The produced size an answer states (``1536x1024``), else the one asked for."""
    match = _SIZE.match(size or "")
    if match:
        return int(match.group(1)), int(match.group(2))
    return request.width, request.height


def _media_type(output_format: str | None, request: ImageRequest) -> str:
    return MEDIA_TYPES.get(output_format or request.output_format or "png", MEDIA_TYPES["png"])


def image_of_event(event: StreamEvent, request: ImageRequest) -> GeneratedImage:
    """The image a ``*.partial_image`` or ``*.completed`` event carries."""
    if not event.b64_json:
        raise GatewayError(ErrorCode.UPSTREAM_ERROR, f"the stream's {event.type or 'event'} carried no image")
    width, height = _dimensions(event.size, request)
    return GeneratedImage(
        b64_json=event.b64_json, width=width, height=height, media_type=_media_type(event.output_format, request)
    )


# --------------------------------------------------------------------------- endpoints

ReqT = TypeVar("ReqT", CreateImageRequest, CreateImageEditRequest, CreateImageVariationRequest)


class OpenAIEndpoint(Endpoint[ReqT, ImagesResponse]):
    """One of the three operations, as a provider entry's settings shape it.

    Outbound only (``from_canonical``, ``decode_result``, and ``encode`` for the whole body with
    the extensions); the inbound root family is ``schemas.openai``.
    """

    dialect = "openai-upstream"
    response_type = ImagesResponse
    streams: ClassVar[bool] = False  # whether the document gives this operation a streamed answer
    event_prefix: ClassVar[str] = ""

    def __init__(self, settings: WireSettings | None = None) -> None:
        super().__init__()
        self.settings = settings or WireSettings()
        self.max_n_per_call = self.settings.max_n_per_call  # type: ignore[misc]  # per provider entry

    # --- inbound: not spoken here
    def to_canonical(self, wire: ReqT) -> ImageRequest:
        raise TypeError("schemas.openai_upstream is outbound only: the inbound /v1 family is schemas.openai")

    def encode_result(self, result: ImageResult, request: ImageRequest) -> ImagesResponse:
        raise TypeError("schemas.openai_upstream is outbound only: the inbound /v1 family is schemas.openai")

    # --- outbound
    def _common(self, request: ImageRequest) -> dict[str, Any]:
        return {
            "model": request.model,
            "n": request.n,
            "size": request.size,
            "response_format": self.settings.response_format,
            "user": request.user,
        }

    def _styled(self, request: ImageRequest) -> dict[str, Any]:
        """The GPT image settings: quality, background, output format and compression, as the request has them."""
        output_format = request.output_format if request.output_format in OUTPUT_FORMATS else None
        return {
            "quality": request.quality,
            "background": request.background,
            "output_format": output_format,
            "output_compression": request.output_compression if output_format in ("jpeg", "webp") else None,
        }

    def extensions(self, request: ImageRequest) -> dict[str, Any]:
        """The documented extensions ``request`` carries that this server takes, under its names."""
        names = self.settings.extensions
        if not names:
            return {}
        values = {
            "seed": request.seed,
            "steps": request.steps,
            "guidance": request.guidance,
            "negative_prompt": request.negative_prompt,
        }
        return {names[key]: value for key, value in values.items() if key in names and value is not None}

    def body(self, request: ImageRequest, *, stream: bool = False) -> bytes | nebul.MultipartFields:
        """The request as it goes on the wire, the extensions this server takes included: the JSON body,
        or the text fields and files of a multipart one (``adapters.upstream.encode_multipart`` writes it)."""
        wire = self.from_canonical(request)
        if stream:
            wire = msgspec.structs.replace(  # type: ignore[type-var]
                wire, stream=True, partial_images=min(request.partial_images, MAX_PARTIAL_IMAGES)
            )
        extra = self.extensions(request)
        if self.body_kind is BodyKind.JSON:
            body = msgspec.json.encode(wire)
            if extra:  # the Struct is an object with at least its prompt: the extensions go before its end
                body = body[:-1] + b"," + msgspec.json.encode(extra)[1:]
            return body
        data, files = self.multipart_fields(wire)
        data.update({name: _form_text(value) for name, value in extra.items()})
        return data, files

    def multipart_fields(self, wire: Any) -> nebul.MultipartFields:
        """Text fields (unset ones left out, booleans as ``true``/``false``) and the files."""
        fields = msgspec.structs.asdict(wire)
        image = fields.pop("image")
        mask: bytes | None = fields.pop("mask", None)
        data = {name: _form_text(value) for name, value in fields.items() if value is not None}
        images: list[bytes] = image if isinstance(image, list) else [image]
        # One image as ``image``; several as ``image[]``, as the document's curl example sends them.
        field = "image" if len(images) == 1 else "image[]"
        files = [(field, _form_file("image" if i == 0 else f"image-{i}", content)) for i, content in enumerate(images)]
        if mask is not None:
            files.append(("mask", _form_file("mask", mask)))
        return data, files

    def decode_result(self, wire: ImagesResponse, request: ImageRequest) -> ImageResult:
        width, height = _dimensions(wire.size, request)
        media_type = _media_type(wire.output_format, request)
        items = wire.data or []
        images = []
        for item in items:
            if item.b64_json is None and item.url is None:
                raise GatewayError(ErrorCode.UPSTREAM_ERROR, "openai answered an image with neither b64_json nor url")
            images.append(
                GeneratedImage(
                    b64_json=item.b64_json,
                    url=item.url,
                    width=width,
                    height=height,
                    media_type=media_type,
                    revised_prompt=item.revised_prompt,
                )
            )
        if not images:
            raise GatewayError(ErrorCode.UPSTREAM_ERROR, "openai answered no image")
        return ImageResult(
            images=images,
            created=wire.created or int(time.time()),
            model=request.model,
            usage=usage_of(wire.usage, len(images)),
        )


def _form_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _form_file(stem: str, content: bytes) -> tuple[str, bytes, str]:
    media_type = sniff_image(content) or "application/octet-stream"
    return f"{stem}.{_EXTENSIONS.get(media_type, 'png')}", content, media_type


def _input_images(request: ImageRequest) -> list[bytes]:
    if not request.images:
        raise GatewayError(ErrorCode.INVALID_REQUEST, "this operation needs at least one `image`", param="image")
    return [image.as_bytes() for image in request.images]


class Generations(OpenAIEndpoint[CreateImageRequest]):
    """``POST /images/generations`` (JSON)."""

    path = "/images/generations"
    request_type = CreateImageRequest
    streams = True
    event_prefix = "image_generation"

    def from_canonical(self, request: ImageRequest) -> CreateImageRequest:
        return CreateImageRequest(
            prompt=request.prompt or "",
            style=request.style if request.style in STYLES else None,
            **self._common(request),
            **self._styled(request),
        )


class Edits(OpenAIEndpoint[CreateImageEditRequest]):
    """``POST /images/edits`` (multipart): ``image`` (or ``image[]``), optional ``mask``."""

    path = "/images/edits"
    operation = Operation.EDIT
    body_kind = BodyKind.MULTIPART
    request_type = CreateImageEditRequest
    streams = True
    event_prefix = "image_edit"

    def from_canonical(self, request: ImageRequest) -> CreateImageEditRequest:
        return CreateImageEditRequest(
            image=_input_images(request),
            prompt=request.prompt or "",
            mask=request.mask.as_bytes() if request.mask is not None else None,
            **self._common(request),
            **self._styled(request),
        )


class Variations(OpenAIEndpoint[CreateImageVariationRequest]):
    """``POST /images/variations`` (multipart): the first image."""

    path = "/images/variations"
    operation = Operation.VARIATION
    body_kind = BodyKind.MULTIPART
    request_type = CreateImageVariationRequest

    def from_canonical(self, request: ImageRequest) -> CreateImageVariationRequest:
        return CreateImageVariationRequest(image=_input_images(request)[0], **self._common(request))


_ENDPOINTS: Mapping[Operation, type[OpenAIEndpoint[Any]]] = {
    Operation.GENERATE: Generations,
    Operation.EDIT: Edits,
    Operation.VARIATION: Variations,
}


def endpoint_for(operation: Operation, settings: WireSettings) -> OpenAIEndpoint[Any]:
    """The endpoint serving ``operation`` for a provider entry with ``settings``."""
    return _ENDPOINTS[operation](settings)


GENERATIONS = Generations()
EDITS = Edits()
VARIATIONS = Variations()


# --------------------------------------------------------------------------- errors

# ``error.code`` values of OpenAI (and the servers that copy it) → the canonical code; the status decides the rest.
CODES: Mapping[str, ErrorCode] = {
    "content_policy_violation": ErrorCode.CONTENT_POLICY,  # dall-e
    "moderation_blocked": ErrorCode.CONTENT_POLICY,  # GPT image models
    "rate_limit_exceeded": ErrorCode.RATE_LIMITED,
    "insufficient_quota": ErrorCode.INSUFFICIENT_QUOTA,
    "billing_hard_limit_reached": ErrorCode.INSUFFICIENT_QUOTA,
    "invalid_api_key": ErrorCode.UNAUTHORIZED,
    "model_not_found": ErrorCode.MODEL_NOT_FOUND,
    "invalid_size": ErrorCode.INVALID_SIZE,
    "invalid_prompt": ErrorCode.INVALID_PROMPT,
    "string_above_max_length": ErrorCode.INVALID_PROMPT,
    "invalid_value": ErrorCode.INVALID_REQUEST,
    "unknown_parameter": ErrorCode.INVALID_REQUEST,
    "unsupported_parameter": ErrorCode.INVALID_REQUEST,
    "invalid_request_error": ErrorCode.INVALID_REQUEST,
    "server_error": ErrorCode.UPSTREAM_ERROR,
    "upstream_error": ErrorCode.UPSTREAM_ERROR,
    "timeout": ErrorCode.UPSTREAM_TIMEOUT,
    "overloaded": ErrorCode.OVERLOADED,
}
# ``error.type`` values that decide when the code does not.
TYPES: Mapping[str, ErrorCode] = {
    "insufficient_quota": ErrorCode.INSUFFICIENT_QUOTA,
    "authentication_error": ErrorCode.UNAUTHORIZED,
    "rate_limit_error": ErrorCode.RATE_LIMITED,
}
# A 400 about one of these fields is about that field.
PARAMS: Mapping[str, ErrorCode] = {"size": ErrorCode.INVALID_SIZE, "prompt": ErrorCode.INVALID_PROMPT}
_ENVELOPE = msgspec.json.Decoder(ErrorEnvelope)


def error_from_envelope(status: int, body: ErrorBody, retry_after: float | None = None) -> GatewayError:
    """OpenAI's error (its status, or 0 for a stream's ``error`` event, and its body) → the canonical error.

    ``error.code`` decides, then ``error.type``, then (for a 400) the field ``param`` names, then
    the status. A client's fault stays the client's (400s keep their code); the upstream's is 5xx.
    """
    said = str(body.code) if body.code is not None else ""
    code = CODES.get(said) or TYPES.get(body.type or "")
    if code in (None, ErrorCode.INVALID_REQUEST) and status in (0, 400) and body.param in PARAMS:
        code = PARAMS[body.param or ""]  # OpenAI's invalid_value about the size is an invalid size
    if code is None:
        code = code_for_status(status) if status >= 400 else ErrorCode.UPSTREAM_ERROR
    message = body.message or said or body.type or f"openai answered {status}"
    return GatewayError(code, message, param=body.param, retry_after=retry_after)


class OpenAIUpstreamErrors(ErrorTable):
    """OpenAI's envelope read into the taxonomy (docs/errors.md); rendered as Nebul renders the same envelope."""

    def render(self, error: GatewayError) -> bytes:
        return nebul.ERRORS.render(error)

    def parse(self, status: int, body: Buffer, retry_after: float | None = None) -> GatewayError:
        try:
            envelope = _ENVELOPE.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return GatewayError(code_for_status(status), f"openai answered {status}", retry_after=retry_after)
        inner = envelope.error or ErrorBody(
            message=envelope.message, type=envelope.type, param=envelope.param, code=envelope.code
        )
        return error_from_envelope(status, inner, retry_after)


ERRORS = OpenAIUpstreamErrors()
