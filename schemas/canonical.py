"""The canonical request, result and error taxonomy every dialect maps to and from.

Nothing here knows which dialect a client spoke or which provider answered: the
dialect modules beside this one translate their wire Structs into these types and back.
"""

from __future__ import annotations

import base64
import binascii
import enum
from typing import Annotated, Any, cast

import msgspec

__all__ = [
    "Energy",
    "EnvironmentImpact",
    "ErrorCode",
    "FailureReason",
    "GatewayError",
    "GeneratedImage",
    "ImageRequest",
    "ImageResult",
    "InputImage",
    "Operation",
    "Progress",
    "ResponseFormat",
    "Timings",
    "Usage",
    "as_gateway_error",
    "decode_hook",
    "encode_hook",
]


class Operation(enum.Enum):
    """What the client asks of the model."""

    GENERATE = "generate"
    EDIT = "edit"
    VARIATION = "variation"


class ResponseFormat(enum.Enum):
    """How the client wants each image handed back."""

    URL = "url"
    B64_JSON = "b64_json"


class ErrorCode(enum.Enum):
    """The one error taxonomy; each member knows its HTTP status and whether a retry may help."""

    INVALID_REQUEST = "invalid_request"
    INVALID_PROMPT = "invalid_prompt"
    INVALID_SIZE = "invalid_size"
    CONTENT_POLICY = "content_policy"
    UNAUTHORIZED = "unauthorized"
    MODEL_NOT_FOUND = "model_not_found"
    OPERATION_NOT_SUPPORTED = "operation_not_supported"
    INSUFFICIENT_QUOTA = "insufficient_quota"
    RATE_LIMITED = "rate_limited"
    UPSTREAM_ERROR = "upstream_error"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    OVERLOADED = "overloaded"
    INTERNAL = "internal"

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS[self]

    @property
    def retryable(self) -> bool:
        return self in _RETRYABLE


_HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.INVALID_PROMPT: 400,
    ErrorCode.INVALID_SIZE: 400,
    ErrorCode.CONTENT_POLICY: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.MODEL_NOT_FOUND: 404,
    ErrorCode.OPERATION_NOT_SUPPORTED: 400,
    ErrorCode.INSUFFICIENT_QUOTA: 402,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.UPSTREAM_ERROR: 502,
    ErrorCode.UPSTREAM_TIMEOUT: 504,
    ErrorCode.OVERLOADED: 503,
    ErrorCode.INTERNAL: 500,
}

_RETRYABLE = frozenset(
    {ErrorCode.RATE_LIMITED, ErrorCode.UPSTREAM_ERROR, ErrorCode.UPSTREAM_TIMEOUT, ErrorCode.OVERLOADED}
)


class FailureReason(enum.Enum):
    """Why an upstream failed, finer than its code, where the gateway acts on the difference.

    A client sees only the code; the router and the operator see the reason.
    """

    # The upstream refused the gateway's own credentials (its 401/403): the same key will
    # not start working on a retry, so that target is called once, cooled down at once,
    # and the next target (another provider, another key) may still serve.
    UPSTREAM_CREDENTIALS = "upstream_credentials"
    # A bounded queue in front of the provider was full (the local backend's): it shed this
    # request and keeps serving the ones it holds. The next target may serve it; the provider
    # is not failing, so it never counts toward a cooldown.
    LOAD_SHED = "load_shed"
    # The provider cannot serve this one model (a local model whose weights are missing, an
    # operator's error): the next target may; the provider's other models still serve, so it
    # never counts toward a cooldown.
    MODEL_UNAVAILABLE = "model_unavailable"


# Reasons a retry on the same target cannot cure (a fallback to another target still may).
_NOT_RETRIED_ON_SAME_TARGET = frozenset(
    {FailureReason.UPSTREAM_CREDENTIALS, FailureReason.LOAD_SHED, FailureReason.MODEL_UNAVAILABLE}
)
# Reasons that say nothing against the provider as a whole: never counted toward its cooldown.
_NOT_THE_PROVIDERS_FAULT = frozenset({FailureReason.LOAD_SHED, FailureReason.MODEL_UNAVAILABLE})


class GatewayError(Exception):
    """A failure with a canonical code; rendered into the client's dialect at the edge.

    ``status`` overrides the code's HTTP status where the taxonomy is too coarse (413 for
    a body over the limit). ``param`` names the offending field when one is known.
    ``headers`` are extra response headers the edge adds (rate-limit state on a refusal).
    ``reason`` is a finer cause than the code (see ``FailureReason``). ``public`` says the
    message was written by the gateway for clients (its own checks, the local engine's);
    an upstream failure's message is not (an upstream's text, an exception's name, a
    provider's name), so the router logs it and tells the client its own sentence instead.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        param: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        provider: str | None = None,
        headers: dict[str, str] | None = None,
        reason: FailureReason | None = None,
        public: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.status = status if status is not None else code.http_status
        self.retry_after = retry_after
        self.provider = provider
        self.headers = headers or {}
        self.reason = reason
        self.public = public

    @property
    def retryable(self) -> bool:
        """Whether another attempt may help: a fallback to the next target, at least."""
        return self.code.retryable

    @property
    def retry_same_target(self) -> bool:
        """Whether calling the same target again may help (not when the gateway's own key was refused)."""
        return self.retryable and self.reason not in _NOT_RETRIED_ON_SAME_TARGET

    @property
    def counts_toward_cooldown(self) -> bool:
        """Whether this failure tells against the provider: retryable, and not a shed load or one missing model.

        A client's fault (bad input, any 4xx) is never retryable, so never counts either.
        """
        return self.retryable and self.reason not in _NOT_THE_PROVIDERS_FAULT

    @property
    def outcome(self) -> str:
        """The label of this failure in metrics and logs: the reason when there is one, else the code."""
        return self.reason.value if self.reason is not None else self.code.value

    def __repr__(self) -> str:
        return f"GatewayError({self.code.value!r}, {self.message!r}, status={self.status})"


PositiveInt = Annotated[int, msgspec.Meta(ge=1)]


def as_gateway_error(exc: BaseException) -> GatewayError | None:
    """``exc`` as the canonical error a client should see; None for an unexpected failure (the server
    that caught it logs it and answers ``internal``). One translation for the gateway and the worker server.

    A ``GatewayError`` is itself. A web framework's refusal of the HTTP request itself, below 500 (an
    exception with an int ``status_code`` and a ``detail``, as Litestar's ``HTTPException``), is
    ``invalid_request`` with that status.
    """
    if isinstance(exc, GatewayError):
        return exc
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int) or status >= 500:
        return None
    message = _HTTP_REFUSALS.get(status) or str(getattr(exc, "detail", "") or "the request was refused")
    return GatewayError(ErrorCode.INVALID_REQUEST, message, status=status)


_HTTP_REFUSALS = {404: "no such route", 405: "method not allowed on this route"}


_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_HEAD = 64  # base64 characters decoded for ``head``: 48 bytes, enough to tell PNG, JPEG or WebP


def _checked_b64(text: str) -> str:
    """``text`` when ``base64.b64decode(validate=True)`` takes it, without the excess padding that one
    ignores; ``ValueError`` otherwise. Checked, not decoded: the standard alphabet, then ``=`` alone,
    as many as the data characters need (any number after a whole group of four, as Python allows)."""
    if not text.isascii():
        raise ValueError("not valid base64")
    padding = text.encode("ascii").translate(None, _B64_ALPHABET)  # what is not in the alphabet
    pads = len(padding)
    if padding != b"=" * pads or not text.endswith("=" * pads):
        raise ValueError("not valid base64")
    data = len(text) - pads
    if not pads:
        if data % 4:
            raise ValueError("not valid base64: incorrect padding")
        return text
    if data % 4 == 0 and data:
        return text[:data]  # "AAAA==" is "AAAA" to Python: pass on what it decodes
    if (data % 4, pads) not in ((2, 2), (3, 1)):
        raise ValueError("not valid base64: incorrect padding")
    return text


class InputImage:
    """An input image (an edit's ``image`` or ``mask``) in the form it arrived in, until a provider asks for another.

    Held as bytes (a multipart file, the worker protocol) or as base64 text (a JSON dialect's
    field: checked for its alphabet and padding, not decoded). A provider whose wire takes
    base64 gets the text as it came (``as_b64``); one that takes bytes gets them decoded once
    (``as_bytes``, kept). ``schemas.imageforms`` states the rule. It compares equal to the
    bytes it stands for, whatever its form; its repr never holds the image.
    """

    __slots__ = ("_b64", "_data")

    def __init__(self, data: bytes | None = None, *, b64: str | None = None) -> None:
        if (data is None) == (b64 is None):
            raise TypeError("an InputImage holds bytes or base64 text")
        self._data = data
        self._b64 = b64

    @classmethod
    def from_b64(cls, text: str) -> InputImage:
        """The image whose base64 text is ``text``; ``ValueError`` when it is not valid base64."""
        return cls(b64=_checked_b64(text))

    @property
    def decoded(self) -> bool:
        """Whether the bytes are held (given, or decoded from the base64 text)."""
        return self._data is not None

    @property
    def size(self) -> int:
        """The image's size in bytes, from the length of its base64 text when that is all that is held."""
        if self._data is not None:
            return len(self._data)
        text = cast(str, self._b64)
        return len(text) // 4 * 3 - (2 if text.endswith("==") else 1 if text.endswith("=") else 0)

    def head(self) -> bytes:
        """The first bytes of the image (at least 48 when it has them), decoding no more than those."""
        if self._data is not None:
            return self._data[: _B64_HEAD // 4 * 3]
        return binascii.a2b_base64(cast(str, self._b64)[:_B64_HEAD])

    def as_bytes(self) -> bytes:
        """The image's bytes, decoded from its base64 text once."""
        if self._data is None:
            self._data = binascii.a2b_base64(cast(str, self._b64), strict_mode=True)
        return self._data

    def as_b64(self) -> str:
        """The image's base64 text: as it came when it came as text, else encoded once."""
        if self._b64 is None:
            self._b64 = base64.b64encode(cast(bytes, self._data)).decode("ascii")
        return self._b64

    def wire_form(self) -> bytes | str:
        """What an encoder of canonical requests writes: the bytes, or the base64 text when only that is held
        (msgspec writes bytes as base64 in JSON, so the JSON is the same either way)."""
        return self._data if self._data is not None else cast(str, self._b64)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, InputImage):
            if self._b64 is not None and self._b64 == other._b64:
                return True
            return self.as_bytes() == other.as_bytes()
        if isinstance(other, bytes):
            return self.as_bytes() == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.as_bytes())

    def __repr__(self) -> str:
        form = "bytes" if self._data is not None else "base64"
        return f"InputImage({form}, {self.size} bytes)"


def encode_hook(obj: Any) -> Any:
    """``enc_hook`` for every msgspec encoder of canonical requests: an ``InputImage`` as its ``wire_form``."""
    if isinstance(obj, InputImage):
        return obj.wire_form()
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def decode_hook(kind: type, obj: Any) -> Any:
    """``dec_hook`` for every msgspec decoder of canonical requests: bytes (msgpack) or base64 text (JSON,
    checked) as an ``InputImage``."""
    if kind is InputImage:
        if isinstance(obj, bytes):
            return InputImage(obj)
        if isinstance(obj, str):
            return InputImage.from_b64(obj)
    raise NotImplementedError(f"cannot decode {kind.__name__}")


def _input_image(image: InputImage | bytes) -> InputImage:
    return InputImage(image) if isinstance(image, bytes) else image


class ImageRequest(msgspec.Struct, kw_only=True, frozen=True):
    """Everything any dialect can ask for, with that dialect's defaults already applied.

    ``width``/``height`` of None mean "the backend's default" (Nebul's ``size: auto``).
    ``images`` and ``mask`` are ``InputImage``s: bytes from multipart, or a JSON dialect's
    base64 text kept as it came until a provider that takes bytes asks for them. Bytes given
    for either are taken as an ``InputImage`` holding them.
    """

    model: str
    prompt: str | None = None
    operation: Operation = Operation.GENERATE
    negative_prompt: str | None = None
    n: PositiveInt = 1
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    style: str | None = None
    quality: str | None = None
    background: str | None = None
    output_format: str | None = None
    # OpenAI's 0-100 for jpeg and webp: 100 (its default) the best quality, lower smaller files.
    output_compression: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None
    response_format: ResponseFormat = ResponseFormat.URL
    # The client named no ``response_format`` on a route whose default a model's configuration may set
    # (the root /v1 family: ``models[].default_response_format``, applied by gateway.routes, then cleared).
    response_format_defaulted: bool = False
    # Streamed answers (OpenAI's ``stream``): the client reads server-sent events, with up to
    # ``partial_images`` previews before the final image.
    stream: bool = False
    partial_images: int = 0
    images: tuple[InputImage, ...] = ()
    mask: InputImage | None = None
    user: str | None = None

    def __post_init__(self) -> None:
        if self.images and any(isinstance(image, bytes) for image in self.images):  # most requests have none
            msgspec.structs.force_setattr(self, "images", tuple(_input_image(image) for image in self.images))
        if isinstance(self.mask, bytes):
            msgspec.structs.force_setattr(self, "mask", InputImage(self.mask))

    @property
    def size(self) -> str | None:
        """``WxH`` when both sides are known."""
        if self.width is None or self.height is None:
            return None
        return f"{self.width}x{self.height}"


class GeneratedImage(msgspec.Struct, kw_only=True):
    """One image, held in the form it arrived in until a client needs another.

    Exactly one of ``b64_json`` (base64 text), ``data`` (raw bytes) or ``url`` is the
    source; converting between them is done on demand and only once. ``b64_json`` may be a
    ``msgspec.Raw``: the JSON string (quotes included) sliced from a provider's answer
    (``schemas.imageforms``), written to the client's answer as it is.
    """

    b64_json: str | msgspec.Raw | None = None
    data: bytes | None = None
    url: str | None = None
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    media_type: str = "image/png"
    # The prompt the provider says it drew from, when it rewrote the client's (OpenAI's ``revised_prompt``).
    revised_prompt: str | None = None

    def as_b64(self) -> str | None:
        """Base64 text of the image, without decoding when it already is base64."""
        if self.b64_json is None and self.data is not None:
            self.b64_json = base64.b64encode(self.data).decode("ascii")
        if isinstance(self.b64_json, msgspec.Raw):
            self.b64_json = str(memoryview(self.b64_json)[1:-1], "ascii")
        return self.b64_json

    def as_json_b64(self) -> str | None:
        """Base64 text for a client's JSON answer: a provider's slice as it came, else ``as_b64``.

        Typed ``str`` for the wire Structs; a slice is a ``msgspec.Raw``, which msgspec writes as
        it is (one copy, no escaping).
        """
        if isinstance(self.b64_json, msgspec.Raw):
            return cast(str, self.b64_json)
        return self.as_b64()

    def as_bytes(self) -> bytes | None:
        """Raw bytes of the image, when it is held locally (not only as a URL)."""
        if self.data is None and self.b64_json is not None:
            text = self.b64_json
            self.data = base64.b64decode(memoryview(text)[1:-1] if isinstance(text, msgspec.Raw) else text)
        return self.data


class Progress(msgspec.Struct, kw_only=True):
    """How far one generation is, as a backend reports it while it works.

    ``step`` of ``steps`` denoising steps are done. ``preview`` is a partial image (number
    ``index`` of the request's ``partial_images``) when the backend drew one at this step.
    """

    step: int
    steps: int
    preview: GeneratedImage | None = None
    index: int = 0


class Timings(msgspec.Struct, kw_only=True):
    """Seconds spent; ``inference`` as the backend reported it, when it did."""

    inference: float | None = None
    total: float | None = None


class Usage(msgspec.Struct, kw_only=True):
    """Token and image counts, as far as the backend reports them."""

    prompt_tokens: int = 0
    total_tokens: int = 0
    images_generated: int = 0


class EnvironmentImpact(msgspec.Struct, kw_only=True):
    """Melious's per-request footprint; None on results from backends that do not report it."""

    carbon_g_co2: float
    water_liters: float
    energy_kwh: float
    renewable_percent: float
    provider_id: str
    location: str


class Energy(msgspec.Struct, kw_only=True):
    """The electricity one request took, as the backend that drew it knows it (see docs/operations.md).

    ``method`` is ``measured`` (a hardware counter: ``source`` nvml or rapl) or ``estimated``
    (``source`` power: configured watts x time; config: a configured energy per image).
    """

    kwh: float
    method: str
    source: str


class ImageResult(msgspec.Struct, kw_only=True):
    """What a backend produced for one canonical request."""

    images: list[GeneratedImage]
    created: int
    model: str
    provider: str = ""
    id: str | None = None
    seed: int | None = None
    timings: Timings = msgspec.field(default_factory=Timings)
    usage: Usage = msgspec.field(default_factory=Usage)
    environment_impact: EnvironmentImpact | None = None
    energy: Energy | None = None
    # The local backend's speed options the images were drawn with (``bfloat16 first_block:0.05 compile:default``):
    # a step cache (but at its exact setting) can change an image, so a cached one can be told from a full one.
    speed_options: str | None = None
