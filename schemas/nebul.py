"""The Nebul dialect (OpenAI-compatible generations, edits and variations), both ways."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal, TypeVar

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
    Usage,
)
from schemas.dialect import (
    NO_STREAM,
    PROMPT_RULE,
    BodyKind,
    Buffer,
    Endpoint,
    ErrorTable,
    code_for_status,
    parse_size,
    refuse_stream,
    require_image,
    sniff_image,
)

__all__ = [
    "EDITS",
    "ERRORS",
    "GENERATIONS",
    "VARIATIONS",
    "MultipartFields",
    "NebulEditRequest",
    "NebulError",
    "NebulGenerationRequest",
    "NebulImageResponse",
    "NebulVariationRequest",
]

DEFAULT_MODEL = "black-forest-labs/FLUX.1-Kontext-dev"
AUTO_SIZE = "auto"
DEFAULT_QUALITY = "auto"
DEFAULT_BACKGROUND = "auto"
DEFAULT_OUTPUT_FORMAT = "png"
MAX_N = 10
MAX_PARTIAL_IMAGES = 3  # OpenAI's limit on previews before the final image of a streamed answer

Prompt = Annotated[str, msgspec.Meta(min_length=1, pattern=r"\S", description=PROMPT_RULE)]
Model = Annotated[str, msgspec.Meta(min_length=1)]
Size = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^(auto|[1-9]\d{0,4}x[1-9]\d{0,4})$", description="auto or WIDTHxHEIGHT in pixels, e.g. 1024x1024"
    ),
]
ResponseFormatName = Literal["url", "b64_json"]
OutputFormat = Literal["png", "jpeg", "webp"]
Images = Annotated[list[bytes], msgspec.Meta(min_length=1)]
PartialImages = Annotated[int, msgspec.Meta(ge=0, le=MAX_PARTIAL_IMAGES)]

MEDIA_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}

# httpx's ``data=`` and ``files=`` for one multipart request.
MultipartFields = tuple[dict[str, str], list[tuple[str, tuple[str, bytes, str]]]]


class NebulOptions(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The fields all three endpoints share; ``None`` means "not sent" (the response shows the default)."""

    n: Annotated[int, msgspec.Meta(ge=1, le=MAX_N)] = 1
    size: Size = AUTO_SIZE
    response_format: ResponseFormatName = "b64_json"
    quality: str | None = None
    background: str | None = None
    output_format: OutputFormat | None = None
    guidance: Annotated[float, msgspec.Meta(ge=0)] | None = None
    user: str | None = None


class StreamOptions(NebulOptions, kw_only=True, omit_defaults=True):
    """The options of the routes that may stream their answer, OpenAI's way: server-sent events
    with ``partial_images`` previews before the final image (``n`` must be 1)."""

    stream: bool = False
    partial_images: PartialImages | None = None


class NebulGenerationRequest(StreamOptions, kw_only=True, omit_defaults=True):
    """The JSON request of ``POST /v1/images/generations``."""

    prompt: Prompt
    model: Model = DEFAULT_MODEL


class NebulEditRequest(StreamOptions, kw_only=True, omit_defaults=True):
    """The multipart request of ``POST /v1/images/edits``: one or more images, an optional mask."""

    model: Model
    prompt: Prompt
    image: Images
    mask: bytes | None = None


class NebulVariationRequest(NebulOptions, kw_only=True, omit_defaults=True):
    """The multipart request of ``POST /v1/images/variations``: the first ``image`` is used."""

    image: Images
    model: Model = DEFAULT_MODEL
    # Variations answer one JSON body: refused when true rather than silently ignored.
    stream: Annotated[bool, msgspec.Meta(description=NO_STREAM)] = False


class NebulImage(msgspec.Struct):
    """One entry of ``data``: both keys always present, the unused one null. ``revised_prompt`` (OpenAI's)
    is read from a provider that gives one, and passed on to the root /v1 family's answer."""

    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | msgspec.UnsetType = msgspec.UNSET


class NebulUsage(msgspec.Struct):
    """``usage``: token counts as Nebul reports them (zero for diffusion models)."""

    prompt_tokens: int = 0
    total_tokens: int = 0


class NebulImageResponse(msgspec.Struct, kw_only=True):
    """The ``ImageResponse`` all three endpoints answer; the echoed settings default when decoding."""

    created: int
    data: list[NebulImage]
    background: str | None = None
    output_format: str | None = None
    size: str | None = None
    quality: str | None = None
    usage: NebulUsage = msgspec.field(default_factory=NebulUsage)


RequestT = TypeVar("RequestT", bound=NebulOptions)
FileRequestT = TypeVar("FileRequestT", bound=NebulEditRequest | NebulVariationRequest)


def _to_canonical(
    wire: NebulOptions,
    *,
    model: str,
    operation: Operation,
    prompt: str | None = None,
    images: tuple[InputImage, ...] = (),
    mask: InputImage | None = None,
) -> ImageRequest:
    """The canonical request from the shared fields plus the endpoint's own."""
    width, height = (None, None) if wire.size == AUTO_SIZE else parse_size(wire.size)
    stream = isinstance(wire, StreamOptions) and wire.stream
    if stream and wire.n != 1:
        raise GatewayError(ErrorCode.INVALID_REQUEST, "`n` must be 1 when `stream` is true", param="n")
    return ImageRequest(
        model=model,
        prompt=prompt,
        operation=operation,
        n=wire.n,
        width=width,
        height=height,
        guidance=wire.guidance,
        quality=wire.quality,
        background=wire.background,
        output_format=wire.output_format,
        response_format=ResponseFormat(wire.response_format),
        images=images,
        mask=mask,
        user=wire.user,
        stream=stream,
        partial_images=(wire.partial_images or 0) if isinstance(wire, StreamOptions) else 0,
    )


def _wire_options(request: ImageRequest) -> dict[str, Any]:
    """The shared wire fields for ``request``; a count over Nebul's limit is refused here."""
    if request.n > MAX_N:
        raise GatewayError(ErrorCode.INVALID_REQUEST, f"Nebul makes at most {MAX_N} images", param="n")
    return {
        "n": request.n,
        "size": request.size or AUTO_SIZE,
        "response_format": request.response_format.value,
        "quality": request.quality,
        "background": request.background,
        "output_format": request.output_format,
        "guidance": request.guidance,
        "user": request.user,
    }


def _input_images(request: ImageRequest) -> list[bytes]:
    """The input images as the files Nebul takes (a base64 text from another dialect decoded here, once)."""
    if not request.images:
        raise GatewayError(ErrorCode.INVALID_REQUEST, "this operation needs at least one `image`", param="image")
    return [image.as_bytes() for image in request.images]


class NebulEndpoint(Endpoint[RequestT, NebulImageResponse]):
    """What the three endpoints share: the ``ImageResponse`` both ways.

    Wire Structs are built through ``request_type``/``response_type`` so that a dialect
    reusing these endpoints with subclassed Structs (the root OpenAI family) gets its own.
    """

    max_n_per_call = 10

    dialect = "nebul"
    response_type = NebulImageResponse

    def encode_result(self, result: ImageResult, request: ImageRequest) -> NebulImageResponse:
        if request.response_format is ResponseFormat.B64_JSON:
            data = [NebulImage(b64_json=image.as_json_b64()) for image in result.images]
        else:
            data = [NebulImage(url=image.url) for image in result.images]
        return self.response_type(
            created=result.created,
            data=data,
            background=request.background or DEFAULT_BACKGROUND,
            output_format=request.output_format or DEFAULT_OUTPUT_FORMAT,
            size=request.size or AUTO_SIZE,
            quality=request.quality or DEFAULT_QUALITY,
            usage=NebulUsage(prompt_tokens=result.usage.prompt_tokens, total_tokens=result.usage.total_tokens),
        )

    def decode_result(self, wire: NebulImageResponse, request: ImageRequest) -> ImageResult:
        media_type = MEDIA_TYPES.get(wire.output_format or DEFAULT_OUTPUT_FORMAT, MEDIA_TYPES["png"])
        return ImageResult(
            images=[
                GeneratedImage(
                    b64_json=item.b64_json,
                    url=item.url,
                    revised_prompt=item.revised_prompt or None,
                    width=request.width,
                    height=request.height,
                    media_type=media_type,
                )
                for item in wire.data
            ],
            created=wire.created or int(time.time()),
            model=request.model,
            usage=Usage(prompt_tokens=wire.usage.prompt_tokens, total_tokens=wire.usage.total_tokens),
        )


class Generations(NebulEndpoint[NebulGenerationRequest]):
    """``POST /v1/images/generations`` (JSON)."""

    path = "/v1/images/generations"
    request_type = NebulGenerationRequest

    def to_canonical(self, wire: NebulGenerationRequest) -> ImageRequest:
        return _to_canonical(wire, model=wire.model, prompt=wire.prompt, operation=Operation.GENERATE)

    def from_canonical(self, request: ImageRequest) -> NebulGenerationRequest:
        return self.request_type(prompt=request.prompt or "", model=request.model, **_wire_options(request))


class MultipartEndpoint(NebulEndpoint[FileRequestT]):
    """An endpoint whose request is multipart: files travel apart from the text fields."""

    body_kind = BodyKind.MULTIPART

    def multipart_fields(self, wire: FileRequestT) -> MultipartFields:
        """httpx's ``data=`` (text fields, unset ones left out) and ``files=`` (each image, then the mask)."""
        fields = msgspec.structs.asdict(wire)
        images: list[bytes] = fields.pop("image")
        mask: bytes | None = fields.pop("mask", None)
        for unsent in ("stream", "partial_images"):  # the gateway never asks a provider for a stream
            fields.pop(unsent, None)
        data = {name: str(value) for name, value in fields.items() if value is not None}
        files = [("image", _form_file("image" if i == 0 else f"image-{i}", image)) for i, image in enumerate(images)]
        if mask is not None:
            files.append(("mask", _form_file("mask", mask)))
        return data, files


def _form_file(stem: str, content: bytes) -> tuple[str, bytes, str]:
    media_type = sniff_image(content) or "application/octet-stream"
    return f"{stem}.{_EXTENSIONS.get(media_type, 'png')}", content, media_type


class Edits(MultipartEndpoint[NebulEditRequest]):
    """``POST /v1/images/edits`` (multipart): ``image`` repeated, optional ``mask``."""

    path = "/v1/images/edits"
    operation = Operation.EDIT
    request_type = NebulEditRequest

    def to_canonical(self, wire: NebulEditRequest) -> ImageRequest:
        return _to_canonical(
            wire,
            model=wire.model,
            prompt=wire.prompt,
            operation=Operation.EDIT,
            images=tuple(InputImage(require_image(image, "image")) for image in wire.image),
            mask=InputImage(require_image(wire.mask, "mask")) if wire.mask is not None else None,
        )

    def from_canonical(self, request: ImageRequest) -> NebulEditRequest:
        return self.request_type(
            model=request.model,
            prompt=request.prompt or "",
            image=_input_images(request),
            mask=request.mask.as_bytes() if request.mask is not None else None,
            **_wire_options(request),
        )


class Variations(MultipartEndpoint[NebulVariationRequest]):
    """``POST /v1/images/variations`` (multipart): one ``image``; extra ones are ignored."""

    path = "/v1/images/variations"
    operation = Operation.VARIATION
    request_type = NebulVariationRequest

    def to_canonical(self, wire: NebulVariationRequest) -> ImageRequest:
        refuse_stream(wire.stream, "image variations")
        return _to_canonical(
            wire,
            model=wire.model,
            operation=Operation.VARIATION,
            images=(InputImage(require_image(wire.image[0], "image")),),
        )

    def from_canonical(self, request: ImageRequest) -> NebulVariationRequest:
        return self.request_type(model=request.model, image=_input_images(request)[:1], **_wire_options(request))


GENERATIONS = Generations()
EDITS = Edits()
VARIATIONS = Variations()


# --- errors: the OpenAI envelope ---


class NebulErrorBody(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class NebulError(msgspec.Struct):
    """``{"error": {"message": "...", "type": "invalid_request_error", "param": "size", "code": "invalid_size"}}``."""

    error: NebulErrorBody


class _UpstreamErrorBody(msgspec.Struct):
    """The envelope as read from a provider, which may leave out any key."""

    message: str = ""
    type: str | None = None
    param: str | None = None
    code: str | None = None


class _UpstreamError(msgspec.Struct):
    error: _UpstreamErrorBody


# (error.type, error.code) per canonical code, as docs/errors.md lists them.
CODES: dict[ErrorCode, tuple[str, str]] = {
    ErrorCode.INVALID_REQUEST: ("invalid_request_error", "invalid_value"),
    ErrorCode.INVALID_PROMPT: ("invalid_request_error", "invalid_prompt"),
    ErrorCode.INVALID_SIZE: ("invalid_request_error", "invalid_size"),
    ErrorCode.CONTENT_POLICY: ("invalid_request_error", "content_policy_violation"),
    ErrorCode.UNAUTHORIZED: ("authentication_error", "invalid_api_key"),
    ErrorCode.MODEL_NOT_FOUND: ("invalid_request_error", "model_not_found"),
    ErrorCode.OPERATION_NOT_SUPPORTED: ("invalid_request_error", "operation_not_supported"),
    ErrorCode.INSUFFICIENT_QUOTA: ("insufficient_quota", "insufficient_quota"),
    ErrorCode.RATE_LIMITED: ("rate_limit_error", "rate_limit_exceeded"),
    ErrorCode.UPSTREAM_ERROR: ("server_error", "upstream_error"),
    ErrorCode.UPSTREAM_TIMEOUT: ("server_error", "timeout"),
    ErrorCode.OVERLOADED: ("server_error", "overloaded"),
    ErrorCode.INTERNAL: ("server_error", "internal_error"),
}
_FROM_CODE = {code: canonical for canonical, (_, code) in CODES.items()}
_ERROR_DECODER = msgspec.json.Decoder(_UpstreamError)


class NebulErrors(ErrorTable):
    """The OpenAI error envelope both ways (docs/errors.md): ``error.code`` decides, the status is the fallback."""

    def render(self, error: GatewayError) -> bytes:
        type_, code = CODES[error.code]
        return msgspec.json.encode(
            NebulError(NebulErrorBody(message=error.message, type=type_, param=error.param, code=code))
        )

    def parse(self, status: int, body: Buffer, retry_after: float | None = None) -> GatewayError:
        try:
            wire = _ERROR_DECODER.decode(body).error
        except (msgspec.ValidationError, msgspec.DecodeError):
            return GatewayError(code_for_status(status), f"Nebul answered {status}", retry_after=retry_after)
        code = _FROM_CODE.get(wire.code or "", code_for_status(status))
        return GatewayError(
            code, wire.message or wire.code or f"Nebul answered {status}", param=wire.param, retry_after=retry_after
        )


ERRORS = NebulErrors()
