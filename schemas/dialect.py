"""What every dialect module provides: endpoints (wire Structs + four mappings) and an error table.

A dialect is spoken both ways. Inbound, a client's wire request is decoded into an
``ImageRequest`` and our ``ImageResult`` is encoded into its wire response. Outbound,
the gateway encodes an ``ImageRequest`` into that provider's wire request and decodes
the provider's wire response into an ``ImageResult``.
"""

from __future__ import annotations

import abc
import base64
import binascii
import enum
import re
from collections.abc import Mapping
from typing import Any, ClassVar, Generic, TypeVar

import msgspec

from schemas.canonical import ErrorCode, GatewayError, ImageRequest, ImageResult, Operation

__all__ = [
    "BodyKind",
    "Buffer",
    "Endpoint",
    "ErrorTable",
    "decode_b64_image",
    "image_dimensions",
    "parse_size",
    "sniff_image",
]

# An answer's body as read off the wire (a growing bytearray, not copied into bytes).
Buffer = bytes | bytearray | memoryview

ReqT = TypeVar("ReqT", bound=msgspec.Struct)
RespT = TypeVar("RespT", bound=msgspec.Struct)


class BodyKind(enum.Enum):
    """How an endpoint's request travels on the wire."""

    JSON = "json"
    MULTIPART = "multipart"


# A msgspec validation error names the field that failed: ``... - at `$.size```.
_PATH_RE = re.compile(r"at `\$\.([A-Za-z_]+)|missing required field `([A-Za-z_]+)`")

# Fields whose failure has a more precise canonical code than invalid_request.
FIELD_ERROR_CODES: Mapping[str, ErrorCode] = {
    "prompt": ErrorCode.INVALID_PROMPT,
    "size": ErrorCode.INVALID_SIZE,
    "width": ErrorCode.INVALID_SIZE,
    "height": ErrorCode.INVALID_SIZE,
    "aspect_ratio": ErrorCode.INVALID_SIZE,
}


def validation_error(exc: msgspec.ValidationError | msgspec.DecodeError | ValueError) -> GatewayError:
    """Turn a msgspec error into the canonical error, keeping msgspec's field path in the message."""
    message = str(exc)
    match = _PATH_RE.search(message)
    param = (match.group(1) or match.group(2)) if match else None
    code = FIELD_ERROR_CODES.get(param or "", ErrorCode.INVALID_REQUEST)
    if isinstance(exc, msgspec.DecodeError) and not isinstance(exc, msgspec.ValidationError):
        message = f"Request body is not valid JSON: {message}"
    return GatewayError(code, message, param=param)


class Endpoint(abc.ABC, Generic[ReqT, RespT]):
    """One endpoint of a dialect: its path, wire Structs and the mappings both ways.

    Subclasses set the class attributes and implement the four mappings; the decoders
    made from ``request_type``/``response_type`` are built once per endpoint.
    """

    dialect: ClassVar[str]
    path: ClassVar[str]
    operation: ClassVar[Operation] = Operation.GENERATE
    body_kind: ClassVar[BodyKind] = BodyKind.JSON
    request_type: type[ReqT]
    response_type: type[RespT]

    def __init__(self) -> None:
        self._request_decoder = msgspec.json.Decoder(self.request_type)
        self._response_decoder = msgspec.json.Decoder(self.response_type)

    # --- inbound: a client speaks this dialect to the gateway ---
    def decode_json(self, body: Buffer) -> ImageRequest:
        """Decode a JSON body into the canonical request, or raise a 4xx ``GatewayError``."""
        try:
            wire = self._request_decoder.decode(body)
            return self.to_canonical(wire)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise validation_error(exc) from exc

    def decode_form(self, form: Mapping[str, Any]) -> ImageRequest:
        """Decode multipart fields (strings and lists of file bytes) into the canonical request."""
        try:
            wire = msgspec.convert(form, self.request_type, strict=False)
            return self.to_canonical(wire)
        except msgspec.ValidationError as exc:
            raise validation_error(exc) from exc

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

    def decode_response(self, body: Buffer, request: ImageRequest) -> ImageResult:
        """Decode a provider's raw answer; a body that is not the documented shape is ``upstream_error``."""
        try:
            wire = self._response_decoder.decode(body)
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


def decode_b64_image(text: str, field: str) -> bytes:
    """Base64 text (optionally a ``data:`` URL) → image bytes; a 400 naming ``field`` when it is not one."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise GatewayError(ErrorCode.INVALID_REQUEST, f"`{field}` is not valid base64", param=field) from exc
    return require_image(data, field)
