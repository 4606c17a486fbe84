"""A dialect request's HTTP side, read straight from its ASGI scope: headers, the bounded body, its form.

Every dialect route is served from the ASGI scope (``gateway.pipeline``); this module is
what that pipeline reads of the client's request, with the limits on it in one place:

- the body is refused with 413 once it is, or says it is, larger than ``server.max_body_bytes``;
- the bytes of every body in flight count against ``server.max_inflight_body_bytes``; a body
  that would overrun it is refused as ``overloaded`` (503) before any of it is read;
- a refused body is read to its end and thrown away (up to ``DRAIN_FACTOR`` times the limit,
  for at most ``DRAIN_SECONDS``) before the answer, so that clients which write the whole
  body before they read (urllib, requests, the openai SDK) see the answer, not a reset.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Mapping
from typing import Any

from litestar.types import Receive, Scope
from multipart import MultipartSegment, ParserError, ParserLimitReached, PushMultipartParser  # type: ignore[import-untyped]

from gateway.admission import BodyBudget
from schemas.canonical import ErrorCode, GatewayError
from schemas.disconnect import ClientGone

__all__ = ["DRAIN_FACTOR", "DRAIN_SECONDS", "IMAGE_FIELDS", "ScopeInbound", "body_too_large", "parse_form"]

DRAIN_FACTOR = 4  # a refused body is read and dropped up to this many times the body limit
DRAIN_SECONDS = 30.0  # and for at most this long
IMAGE_FIELDS = frozenset({"image", "image[]"})
MAX_FORM_PARTS = 64


def body_too_large(limit: int) -> GatewayError:
    """A client body over ``server.max_body_bytes``."""
    return GatewayError(ErrorCode.INVALID_REQUEST, f"request body is larger than {limit} bytes", status=413)


def _not_form(why: str) -> GatewayError:
    return GatewayError(ErrorCode.INVALID_REQUEST, f"request body is not a valid form: {why}")


def _text(name: str, data: bytes | bytearray, charset: str | None) -> str:
    try:
        return bytes(data).decode(charset or "utf-8")
    except (UnicodeDecodeError, LookupError):
        raise GatewayError(
            ErrorCode.INVALID_REQUEST, f"form field `{name}` is not valid UTF-8 text", param=name
        ) from None


def _multipart(body: bytes | bytearray, boundary: str) -> dict[str, Any]:
    """Every part: text fields as str, file parts as bytes, ``image``/``image[]`` merged into a list."""
    fields: dict[str, Any] = {}
    images: list[bytes] = []
    segment: MultipartSegment | None = None
    data = bytearray()
    try:
        with PushMultipartParser(boundary.encode("latin-1"), max_segment_count=MAX_FORM_PARTS) as parser:
            for part in [*parser.parse(body), *parser.parse(b"")]:
                if isinstance(part, MultipartSegment):
                    segment, data = part, bytearray()
                elif part:
                    data.extend(part)
                elif segment is not None:  # the end of a part
                    if segment.name in IMAGE_FIELDS:
                        images.append(bytes(data))  # a text field where a file belongs: checked as an image later
                    elif segment.filename is not None:
                        fields[segment.name] = bytes(data)
                    else:
                        fields[segment.name] = _text(segment.name, data, segment.charset)
                    segment = None
            if not parser.closed:
                raise _not_form("the multipart body ends before its closing boundary")
    except ParserLimitReached:
        raise _not_form(f"more than {MAX_FORM_PARTS} parts") from None
    except ParserError as exc:
        raise _not_form(str(exc)) from None
    if images:
        fields["image"] = images
    return fields


def _urlencoded(body: bytes | bytearray) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    try:
        pairs = urllib.parse.parse_qsl(bytes(body).decode("utf-8"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise _not_form("it is not valid UTF-8 text") from None
    for name, value in pairs:
        if name in IMAGE_FIELDS:
            fields.setdefault("image", []).append(value.encode())
        else:
            fields[name] = value
    return fields


def parse_form(content_type: str, body: bytes | bytearray) -> dict[str, Any]:
    """A form body (multipart or urlencoded) as the dialects' ``decode_form`` takes it."""
    media, _, params = content_type.partition(";")
    media = media.strip().lower()
    if media == "multipart/form-data":
        boundary = next(
            (
                value.strip().strip('"')
                for name, _, value in (p.partition("=") for p in params.split(";"))
                if name.strip().lower() == "boundary"
            ),
            "",
        )
        if not boundary:
            raise _not_form("multipart/form-data without a boundary")
        return _multipart(body, boundary)
    if media == "application/x-www-form-urlencoded":
        return _urlencoded(body)
    raise GatewayError(
        ErrorCode.INVALID_REQUEST,
        f"this route takes multipart/form-data, not {media or 'a body without a Content-Type'}",
        status=415,
    )


class ScopeInbound:
    """A dialect request read straight from its ASGI scope and messages."""

    __slots__ = ("_headers", "budget", "finished", "max_body_bytes", "receive", "reserved", "scope", "started")

    def __init__(self, scope: Scope, receive: Receive, max_body_bytes: int, budget: BodyBudget) -> None:
        self.scope = scope
        self.receive = receive
        self.max_body_bytes = max_body_bytes
        self.budget = budget
        self.reserved = 0  # bytes of the in-flight budget this request holds (given back by ``release``)
        self.finished = False  # the body has been received to its end
        self.started = False  # some of the body has been asked for
        self._headers: dict[str, str] | None = None

    @property
    def headers(self) -> Mapping[str, str]:
        """Header names in lower case; a repeated header keeps its first value."""
        if self._headers is None:
            self._headers = {}
            for name, value in self.scope["headers"]:
                self._headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
        return self._headers

    def _declared_length(self) -> int | None:
        declared = self.headers.get("content-length")
        return int(declared) if declared is not None and declared.isdigit() else None

    async def body(self) -> bytes | bytearray:
        """The whole body, within the per-request limit and the in-flight budget."""
        limit = self.max_body_bytes
        self.started = True
        declared = self._declared_length()
        if declared is not None and declared > limit:
            raise body_too_large(limit)
        if declared is not None:
            self._reserve(declared)
            return await self._read_exactly(declared)
        return await self._read_chunked(limit)

    def _reserve(self, size: int) -> None:
        if size and not self.budget.take(size):
            raise GatewayError(
                ErrorCode.OVERLOADED,
                "the gateway is receiving too many large requests at once; try again shortly",
                retry_after=1.0,
            )
        self.reserved += size

    async def _chunk(self) -> bytes:
        """The next piece of the body (``finished`` tells whether it was the last); ``ClientGone`` on a hang-up."""
        message = await self.receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        self.finished = not message.get("more_body", False)
        return message.get("body", b"")  # type: ignore[return-value]

    async def _read_exactly(self, size: int) -> bytes | bytearray:
        """A body of a declared length, read into one buffer of that size (no chunks, no join)."""
        buffer = bytearray(size)
        view = memoryview(buffer)
        filled = 0
        while not self.finished:
            chunk = await self._chunk()
            end = filled + len(chunk)
            if end > size:  # more than it declared: the server normally stops this first
                raise GatewayError(ErrorCode.INVALID_REQUEST, "request body is longer than its Content-Length")
            view[filled:end] = chunk
            filled = end
        view.release()
        return buffer if filled == size else buffer[:filled]

    async def _read_chunked(self, limit: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while not self.finished:
            chunk = await self._chunk()
            size += len(chunk)
            if size > limit:
                raise body_too_large(limit)
            self._reserve(len(chunk))
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def form(self) -> dict[str, Any]:
        """The body as form fields (``parse_form``)."""
        return parse_form(self.headers.get("content-type", ""), await self.body())

    async def drain(self) -> None:
        """Read what is left of an unread body and drop it, within the drain bound (see the module doc).

        Called before any answer to a request whose body was not read to its end; a client
        that sends past the bound, or too slowly, gets its answer anyway and the connection closes.
        """
        if not self.started and self.headers.get("expect", "").lower() == "100-continue":
            return  # the client waits for a 100 before it sends the body: it will read this answer instead
        left = DRAIN_FACTOR * self.max_body_bytes
        try:
            async with asyncio.timeout(DRAIN_SECONDS):
                while not self.finished and left > 0:
                    left -= len(await self._chunk())
        except TimeoutError:
            return

    def release(self) -> None:
        """Give this request's share of the in-flight budget back."""
        if self.reserved:
            self.budget.give(self.reserved)
            self.reserved = 0

    def base_url(self) -> str:
        """Where the client reached this gateway, without a trailing slash."""
        scope = self.scope
        host = self.headers.get("host")
        if host is None:
            server = scope.get("server")
            host = f"{server[0]}:{server[1]}" if server else "localhost"
        return f"{scope.get('scheme', 'http')}://{host}{scope.get('root_path', '')}".rstrip("/")
