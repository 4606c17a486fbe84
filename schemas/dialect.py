"""What every dialect module provides: endpoints (wire Structs + four mappings) and an error table.

A dialect is spoken both ways. Inbound, a client's wire request is decoded into an
``ImageRequest`` and our ``ImageResult`` is encoded into its wire response. Outbound,
the gateway encodes an ``ImageRequest`` into that provider's wire request and decodes
the provider's wire response into an ``ImageResult``.
"""

from __future__ import annotations

import abc
import enum
import json
import math
import re
from collections.abc import Mapping
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar

import msgspec
import msgspec.inspect

from schemas.canonical import ErrorCode, GatewayError, ImageRequest, ImageResult, InputImage, Operation, decode_hook
from schemas.imageforms import sliceable, slicing_decoder

__all__ = [
    "RETRY_AFTER_MAX_S",
    "BodyKind",
    "Buffer",
    "Endpoint",
    "ErrorAnswer",
    "ErrorTable",
    "b64_image",
    "bounded_retry_after",
    "error_answer",
    "image_dimensions",
    "parse_retry_after",
    "parse_size",
    "refuse_stream",
    "sniff_image",
]

# An answer's body as read off the wire (a growing bytearray, not copied into bytes).
Buffer = bytes | bytearray | memoryview

# The longest wait an upstream's Retry-After may ask of a client; past it, this many seconds.
# (The router's own backoff is capped lower, at the retry policy's retry_after_cap_s.)
RETRY_AFTER_MAX_S = 3600.0
_DELTA_SECONDS = re.compile(r"[0-9]{1,32}(?:\.[0-9]{1,32})?")


def bounded_retry_after(seconds: float | None) -> float | None:
    """A wait an upstream asked for as a number: kept when finite and not negative, capped at
    ``RETRY_AFTER_MAX_S``; anything else is no wait at all (None)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return None
    return min(float(seconds), RETRY_AFTER_MAX_S)


def parse_retry_after(value: str | None) -> float | None:
    """An upstream's ``Retry-After`` header, read strictly: seconds as digits (a fraction allowed),
    capped at ``RETRY_AFTER_MAX_S``. An HTTP date, ``inf``, ``-1``, ``1e9`` or ``1_0`` is ignored
    (None): the retry policy's own backoff applies."""
    if value is None:
        return None
    value = value.strip(" \t")
    return min(float(value), RETRY_AFTER_MAX_S) if _DELTA_SECONDS.fullmatch(value) else None


ReqT = TypeVar("ReqT", bound=msgspec.Struct)
RespT = TypeVar("RespT", bound=msgspec.Struct)


class BodyKind(enum.Enum):
    """How an endpoint's request travels on the wire."""

    JSON = "json"
    MULTIPART = "multipart"


# What the ``stream`` field of an endpoint that cannot stream its answer accepts (false, or left out).
NO_STREAM = "false: this endpoint answers one JSON body and does not stream"


def refuse_stream(stream: bool, where: str) -> None:
    """A 400 for ``stream: true`` on an endpoint without streamed answers, rather than ignoring it."""
    if stream:
        raise GatewayError(
            ErrorCode.INVALID_REQUEST,
            f"`stream` is not supported by {where}: it answers one JSON body; leave `stream` out or false",
            param="stream",
        )


# A msgspec validation error names the field that failed: ``... - at `$.size```.
_PATH_RE = re.compile(r"at `\$\.([A-Za-z_]+)|missing required field `([A-Za-z_]+)`")
# Where a malformed JSON body went wrong: ``JSON is malformed: ... (byte 12)``.
_BYTE_RE = re.compile(r"\(byte (\d+)\)")

# Fields whose failure has a more precise canonical code than invalid_request.
FIELD_ERROR_CODES: Mapping[str, ErrorCode] = {
    "prompt": ErrorCode.INVALID_PROMPT,
    "size": ErrorCode.INVALID_SIZE,
    "width": ErrorCode.INVALID_SIZE,
    "height": ErrorCode.INVALID_SIZE,
    "aspect_ratio": ErrorCode.INVALID_SIZE,
}

# The one rule every dialect's prompt follows on the wire (its length limit is the config's).
PROMPT_RULE = "a text that is not empty or only spaces"

# What a field of each kind may hold, in words a client reads (validator internals stay inside).
_KIND_WORDS: Mapping[type, str] = {
    msgspec.inspect.StrType: "a string",
    msgspec.inspect.BoolType: "true or false",
    msgspec.inspect.BytesType: "an image file",
}


def describe_type(kind: msgspec.inspect.Type) -> str:
    """What a value of ``kind`` may be: the valid values of an enum, the range of a number.

    A ``Meta(description=...)`` on the field wins; a string with a pattern must have one,
    since a regex is no answer for a client.
    """
    if isinstance(kind, msgspec.inspect.Metadata):
        description = (kind.extra_json_schema or {}).get("description")
        return str(description) if description else describe_type(kind.type)
    if isinstance(kind, msgspec.inspect.UnionType):
        return " or ".join(describe_type(t) for t in kind.types if not isinstance(t, msgspec.inspect.NoneType))
    if isinstance(kind, msgspec.inspect.LiteralType):
        return "one of " + ", ".join(str(value) for value in kind.values)
    if isinstance(kind, msgspec.inspect.IntType | msgspec.inspect.FloatType):
        return _describe_number(kind)
    if isinstance(kind, msgspec.inspect.ListType):
        item = describe_type(kind.item_type).removeprefix("an ").removeprefix("a ")
        return f"one or more {item}s" if kind.min_length else f"a list of {item}s"
    if isinstance(kind, msgspec.inspect.StrType) and kind.pattern:
        raise TypeError(f"a string with the pattern {kind.pattern!r} needs Meta(description=...) for clients")
    if isinstance(kind, msgspec.inspect.StrType) and kind.min_length:
        return "a non-empty string"
    return _KIND_WORDS.get(type(kind), "a valid value")


def _describe_number(kind: msgspec.inspect.IntType | msgspec.inspect.FloatType) -> str:
    noun = "an integer" if isinstance(kind, msgspec.inspect.IntType) else "a number"
    if kind.ge is not None and kind.le is not None:
        return f"{noun} from {kind.ge} to {kind.le}"
    if kind.ge is not None:
        return f"{noun} of at least {kind.ge}"
    if kind.le is not None:
        return f"{noun} of at most {kind.le}"
    return noun


def describe_fields(struct: type[msgspec.Struct]) -> dict[str, str]:
    """Each wire field of ``struct`` (by its name on the wire) → what it may hold, in words."""
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    return {field.encode_name: describe_type(field.type) for field in info.fields}


def validation_error(
    exc: msgspec.ValidationError | msgspec.DecodeError | ValueError, fields: Mapping[str, str] | None = None
) -> GatewayError:
    """Turn a msgspec error into the canonical error: the field in the client's name and what it may hold.

    ``fields`` is the endpoint's ``describe_fields``; msgspec's own wording is kept only for
    a field it does not describe.
    """
    message = str(exc)
    if isinstance(exc, msgspec.DecodeError) and not isinstance(exc, msgspec.ValidationError):
        where = _BYTE_RE.search(message)
        at = f" (at byte {where.group(1)})" if where else " (it ends too early)" if "truncated" in message else ""
        return GatewayError(ErrorCode.INVALID_REQUEST, f"Request body is not valid JSON{at}")
    match = _PATH_RE.search(message)
    param = (match.group(1) or match.group(2)) if match else None
    if param is None:
        if message.startswith("Expected `object`"):
            return GatewayError(ErrorCode.INVALID_REQUEST, "Request body must be a JSON object")
        return GatewayError(ErrorCode.INVALID_REQUEST, message)
    code = FIELD_ERROR_CODES.get(param, ErrorCode.INVALID_REQUEST)
    allowed = (fields or {}).get(param)
    if allowed is None:
        return GatewayError(code, message, param=param)
    if "missing required field" in message:
        return GatewayError(code, f"`{param}` is required: {allowed}", param=param)
    return GatewayError(code, f"`{param}` must be {allowed}", param=param)


def not_utf8(field: str | None) -> GatewayError:
    """Text that is not UTF-8: a 400 naming the field when it is known."""
    if field is None:
        return GatewayError(ErrorCode.INVALID_REQUEST, "Request body holds text that is not valid UTF-8")
    return GatewayError(ErrorCode.INVALID_REQUEST, f"`{field}` is not valid UTF-8 text", param=field)


def _is_utf8(body: Buffer) -> bool:
    try:
        bytes(body).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


_UNDECODABLE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of a byte that is not UTF-8


def _undecodable_field(body: Buffer) -> str | None:
    """The top-level field whose value holds the bytes that are not UTF-8 (None when it cannot be told).

    Only on the error path: the body is read again with each bad byte kept as a lone surrogate.
    """
    try:
        fields = json.loads(bytes(body).decode("utf-8", "surrogateescape"))
    except (ValueError, RecursionError):
        return None
    if not isinstance(fields, dict):
        return None
    for name, value in fields.items():
        try:
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        except (ValueError, RecursionError):
            continue
        if _UNDECODABLE.search(text) and not _UNDECODABLE.search(name):
            return name
    return None


def _binary_fields(struct: type[msgspec.Struct]) -> frozenset[str]:
    """The fields of a wire request that hold file bytes (``image``, ``mask``), not text."""
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    return frozenset(field.encode_name for field in info.fields if _holds_bytes(field.type))


def _holds_bytes(kind: msgspec.inspect.Type) -> bool:
    if isinstance(kind, msgspec.inspect.BytesType | msgspec.inspect.ByteArrayType | msgspec.inspect.MemoryViewType):
        return True
    if isinstance(kind, msgspec.inspect.Metadata):
        return _holds_bytes(kind.type)
    if isinstance(kind, msgspec.inspect.UnionType):
        return any(_holds_bytes(member) for member in kind.types)
    item = getattr(kind, "item_type", None)  # list[bytes] and the like
    return item is not None and _holds_bytes(item)


class Endpoint(abc.ABC, Generic[ReqT, RespT]):
    """One endpoint of a dialect: its path, wire Structs and the mappings both ways.

    Subclasses set the class attributes and implement the four mappings; the decoders
    made from ``request_type``/``response_type`` are built once per endpoint.
    """

    dialect: ClassVar[str]
    path: ClassVar[str]
    operation: ClassVar[Operation] = Operation.GENERATE
    # Most images one call to this endpoint may ask for, as a provider; the gateway splits a larger n.
    max_n_per_call: ClassVar[int] = 1
    body_kind: ClassVar[BodyKind] = BodyKind.JSON
    request_type: type[ReqT]
    response_type: type[RespT]
    # Canonical field name → this endpoint's wire name, where they differ (``steps`` → ``num_steps``;
    # ``width/height`` where one canonical field is two on the wire).
    field_names: ClassVar[Mapping[str, str]] = {}

    def __init__(self) -> None:
        self._request_decoder = msgspec.json.Decoder(self.request_type, dec_hook=decode_hook)
        self._response_decoder = msgspec.json.Decoder(self.response_type)
        self._slicing_decoder = slicing_decoder(self.response_type)  # base64 as slices: schemas.imageforms
        self._binary_fields = _binary_fields(self.request_type)
        self.field_rules = describe_fields(self.request_type)

    def client_error(self, error: GatewayError) -> GatewayError:
        """``error`` (raised after decoding, in canonical field names) in this endpoint's field names.

        The field is named in the message, so a client reads which of its own fields to fix; a
        message that already names it (in the client's name) is kept.
        """
        if error.param is None:
            return error
        wire = self.field_names.get(error.param, error.param)
        label = "/".join(f"`{name}`" for name in wire.split("/"))
        said = wire == error.param and re.search(rf"\b{re.escape(wire)}\b", error.message)  # "model 'x' ..."
        if label not in error.message and not said:
            error.message = f"{label}: {error.message}"
            error.args = (error.message,)
        error.param = wire
        return error

    # --- inbound: a client speaks this dialect to the gateway ---
    def decode_json(self, body: Buffer) -> ImageRequest:
        """Decode a JSON body into the canonical request, or raise a 4xx ``GatewayError``."""
        try:
            wire = self._request_decoder.decode(body)
        except msgspec.ValidationError as exc:
            raise validation_error(exc, self.field_rules) from exc
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            # Text that is not UTF-8: msgspec 0.22 raises UnicodeDecodeError (and only for the strings it keeps),
            # 0.23 a DecodeError. Either way the body is looked at again, on this error path only.
            if isinstance(exc, UnicodeDecodeError) or not _is_utf8(body):
                raise not_utf8(_undecodable_field(body)) from exc
            raise validation_error(exc, self.field_rules) from exc
        except RecursionError as exc:
            raise GatewayError(ErrorCode.INVALID_REQUEST, "Request body is nested too deeply") from exc
        try:
            return self.to_canonical(wire)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise validation_error(exc, self.field_rules) from exc

    def decode_form(self, form: Mapping[str, Any]) -> ImageRequest:
        """Decode multipart fields into the canonical request.

        Text fields may come as str or as the part's raw bytes (UTF-8, refused with a 400
        naming the field when they are not); ``image``/``mask`` hold file bytes.
        """
        fields = {name: self._form_value(name, value) for name, value in form.items()}
        try:
            wire = msgspec.convert(fields, self.request_type, strict=False)
            return self.to_canonical(wire)
        except msgspec.ValidationError as exc:
            raise validation_error(exc, self.field_rules) from exc

    def _form_value(self, name: str, value: Any) -> Any:
        if name in self._binary_fields or not isinstance(value, bytes | bytearray | memoryview):
            return value
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise not_utf8(name) from exc

    @abc.abstractmethod
    def to_canonical(self, wire: ReqT) -> ImageRequest:
        """Wire request → canonical, applying this dialect's defaults. Raises ``GatewayError`` or ``ValueError``."""

    @abc.abstractmethod
    def encode_result(self, result: ImageResult, request: ImageRequest) -> RespT:
        """Canonical result → this dialect's wire response (images already in the wanted form)."""

    # --- outbound: the gateway speaks this dialect to the provider ---
    @abc.abstractmethod
    def from_canonical(self, request: ImageRequest) -> ReqT:
        """Canonical request → this provider's wire request."""

    @abc.abstractmethod
    def decode_result(self, wire: RespT, request: ImageRequest) -> ImageResult:
        """This provider's wire response → canonical result."""

    def decode_response(
        self, body: Buffer, request: ImageRequest, *, slices: bool = False, plain: bool | None = None
    ) -> ImageResult:
        """Decode a provider's raw answer; a body that is not the documented shape is ``upstream_error``.

        With ``slices``, base64 images stay slices of ``body`` where they can (``schemas.imageforms``):
        the caller keeps ``body`` as it is while the result lives. ``plain``: whether the body is
        ``sliceable``, when the caller already knows (checked as it was read); else it is checked here.
        """
        decoder = self._response_decoder
        if slices and self._slicing_decoder is not None and (sliceable(body) if plain is None else plain):
            decoder = self._slicing_decoder
        try:
            wire = decoder.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise GatewayError(
                ErrorCode.UPSTREAM_ERROR, f"{self.dialect} answered a body that is not its documented shape: {exc}"
            ) from exc
        return self.decode_result(wire, request)


class ErrorTable(abc.ABC):
    """A dialect's errors both ways: render ours into its envelope, read its envelope into ours."""

    @abc.abstractmethod
    def render(self, error: GatewayError) -> bytes:
        """The JSON body a client of this dialect expects for ``error`` (status is ``error.status``)."""

    @abc.abstractmethod
    def parse(self, status: int, body: Buffer, retry_after: float | None = None) -> GatewayError:
        """A provider's error answer → canonical error (unknown codes fall back on the status)."""


class ErrorAnswer(NamedTuple):
    """An error as it goes on the wire: status, headers, body."""

    status: int
    headers: dict[str, str]
    body: bytes


def error_answer(error: GatewayError, table: ErrorTable) -> ErrorAnswer:
    """``error`` in the envelope of ``table``, with ``Retry-After`` in whole seconds when it has one."""
    headers = dict(error.headers)
    if error.retry_after is not None and math.isfinite(error.retry_after) and "Retry-After" not in headers:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    if error.provider:
        headers["X-Gateway-Provider"] = error.provider
    return ErrorAnswer(error.status, headers, table.render(error))


STATUS_FALLBACK: Mapping[int, ErrorCode] = {
    400: ErrorCode.INVALID_REQUEST,
    401: ErrorCode.UNAUTHORIZED,
    402: ErrorCode.INSUFFICIENT_QUOTA,
    403: ErrorCode.UNAUTHORIZED,
    404: ErrorCode.MODEL_NOT_FOUND,
    408: ErrorCode.UPSTREAM_TIMEOUT,
    413: ErrorCode.INVALID_REQUEST,
    422: ErrorCode.INVALID_REQUEST,
    429: ErrorCode.RATE_LIMITED,
    503: ErrorCode.OVERLOADED,
    504: ErrorCode.UPSTREAM_TIMEOUT,
}


def code_for_status(status: int) -> ErrorCode:
    """The canonical code for an HTTP status when the body names no code we know."""
    if status in STATUS_FALLBACK:
        return STATUS_FALLBACK[status]
    return ErrorCode.UPSTREAM_ERROR if status >= 500 else ErrorCode.INVALID_REQUEST


# --- small shared pieces of the wire formats ---

_SIZE_RE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


def parse_size(size: str) -> tuple[int, int]:
    """``"1024x768"`` → ``(1024, 768)``; anything else is an ``invalid_size`` error."""
    match = _SIZE_RE.match(size)
    if not match:
        raise GatewayError(ErrorCode.INVALID_SIZE, f"size must look like 1024x1024, got {size!r}", param="size")
    return int(match.group(1)), int(match.group(2))


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def sniff_image(data: bytes) -> str | None:
    """The media type of PNG, JPEG or WebP bytes, or None when the bytes are none of these."""
    if data.startswith(_PNG_MAGIC):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def image_dimensions(data: bytes) -> tuple[int, int] | None:
    """Width and height read from a PNG or JPEG header, without decoding pixels."""
    if data.startswith(_PNG_MAGIC) and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data.startswith(b"\xff\xd8"):
        return _jpeg_dimensions(data)
    return None


def _jpeg_dimensions(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
        i += 2 + length
    return None


def require_image(data: bytes, field: str) -> bytes:
    """Check that ``data`` is an image we accept; a 400 naming ``field`` otherwise."""
    if sniff_image(data) is None:
        raise GatewayError(ErrorCode.INVALID_REQUEST, f"`{field}` is not a PNG, JPEG or WebP image", param=field)
    return data


def b64_image(text: str, field: str) -> InputImage:
    """Base64 text (optionally a ``data:`` URL) → the image, kept as that text; a 400 naming ``field``
    when it is not valid base64 or not a PNG, JPEG or WebP image. Checked, not decoded: only its
    first bytes are, to tell what it is (``schemas.imageforms``)."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        image = InputImage.from_b64(text)
    except ValueError as exc:
        raise GatewayError(ErrorCode.INVALID_REQUEST, f"`{field}` is not valid base64", param=field) from exc
    require_image(image.head(), field)
    return image
