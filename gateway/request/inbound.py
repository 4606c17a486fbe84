"""A dialect request's HTTP side, read straight from its ASGI scope: headers, the bounded body, its form.

Every dialect route is served from the ASGI scope (``gateway.pipeline``); this module is
what that pipeline reads of the client's request, with the limits on it in one place:

- the body is refused with 413 once it is, or says it is, larger than ``server.max_body_bytes``;
- the bytes of every body in flight count against ``server.max_inflight_body_bytes`` (a declared
  length before the body is read, a chunked body as it arrives; memory follows the bytes that
  arrive); a body that would overrun it is refused as ``overloaded`` (503), and one that would take
  its key (or, on an open gateway, its client address) past ``server.max_inflight_body_share`` of
  it as ``rate_limited`` (429);
- a body must keep coming: nothing for ``server.body_idle_timeout_s``, or an average pace under
  ``server.body_min_bytes_per_s`` after that long, is a 408 and the connection closes;
- a refused body is read to its end and thrown away (up to ``DRAIN_FACTOR`` times the limit,
  for at most ``DRAIN_SECONDS``) before the answer, so that clients which write the whole
  body before they read (urllib, requests, the openai SDK) see the answer, not a reset.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Mapping
from typing import Any, NamedTuple

from litestar.types import Receive, Scope
from multipart import MultipartSegment, ParserError, ParserLimitReached, PushMultipartParser  # type: ignore[import-untyped]

from gateway.admission.gate import BodyBudget
from schemas.canonical import ErrorCode, GatewayError
from schemas.disconnect import ClientGone

__all__ = [
    "DRAIN_FACTOR",
    "DRAIN_SECONDS",
    "IMAGE_FIELDS",
    "BodyPace",
    "ScopeInbound",
    "body_too_large",
    "parse_form",
]

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


class BodyPace(NamedTuple):
    """How slowly a body may arrive (``server.body_idle_timeout_s``, ``server.body_min_bytes_per_s``)."""

    idle_s: float = 15.0  # no byte for this long: a 408
    min_bytes_per_s: int = 16 * 1024  # the average pace once ``idle_s`` has passed (0: none)


DEFAULT_PACE = BodyPace()


class ScopeInbound:
    """A dialect request read straight from its ASGI scope and messages."""

    __slots__ = (
        "_headers",
        "budget",
        "finished",
        "holder",
        "max_body_bytes",
        "pace",
        "receive",
        "received",
        "reserved",
        "scope",
        "stalled",
        "started",
        "started_at",
    )

    def __init__(
        self, scope: Scope, receive: Receive, max_body_bytes: int, budget: BodyBudget, pace: BodyPace = DEFAULT_PACE
    ) -> None:
        self.scope = scope
        self.receive = receive
        self.max_body_bytes = max_body_bytes
        self.budget = budget
        self.pace = pace
        # Whose share of the in-flight budget the body counts against: the client's address until
        # the request's key is known (``serve`` names it then).
        client = scope.get("client")
        self.holder = f"address:{client[0]}" if client else "address:?"
        self.reserved = 0  # bytes of the in-flight budget this request holds (given back by ``release``)
        self.received = 0  # bytes of the body received so far
        self.finished = False  # the body has been received to its end
        self.started = False  # some of the body has been asked for
        self.started_at = 0.0
        self.stalled = False  # the body came too slowly: the connection is closed without reading more
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
        """The whole body, within the per-request limit, the in-flight budget and the pace bounds.

        A declared length is reserved before the body is read, so that under a flood only as many bodies
        start as fit together (reserving as bytes arrive let 24 bodies that could not all fit take a piece
        each and refuse one another: 0 of 24 served); a chunked body reserves as it arrives. Memory grows
        with the bytes that arrive, never from the declared length, and a reservation is held only while
        the body keeps its pace (``BodyPace``) and within its holder's share.
        """
        limit = self.max_body_bytes
        self.started = True
        declared = self._declared_length()
        if declared is not None and declared > limit:
            raise body_too_large(limit)
        if declared is not None:
            self._reserve(declared)  # admission: only as many bodies start as fit together
        buffer = bytearray()  # grows with the bytes that arrive: nothing is allocated from the declared length
        while not self.finished:
            chunk = await self._chunk()
            if len(buffer) + len(chunk) > (limit if declared is None else declared):
                if declared is not None:  # more than it declared: the server normally stops this first
                    raise GatewayError(ErrorCode.INVALID_REQUEST, "request body is longer than its Content-Length")
                raise body_too_large(limit)
            if declared is None:
                self._reserve(len(chunk))
            buffer += chunk
        return buffer

    def _reserve(self, size: int) -> None:
        if not size:
            return
        refused = self.budget.take(size, self.holder)
        if refused is ErrorCode.RATE_LIMITED:
            raise GatewayError(
                ErrorCode.RATE_LIMITED,
                "this client is sending too many large requests at once; try again shortly",
                retry_after=1.0,
            )
        if refused is not None:
            raise GatewayError(
                ErrorCode.OVERLOADED,
                "the gateway is receiving too many large requests at once; try again shortly",
                retry_after=1.0,
            )
        self.reserved += size

    async def _chunk(self) -> bytes:
        """The next piece of the body (``finished`` tells whether it was the last); ``ClientGone`` on a hang-up,
        a 408 when it does not come in time (``pace``)."""
        loop = asyncio.get_running_loop()
        if not self.started_at:
            self.started_at = loop.time()
        try:
            async with asyncio.timeout(self.pace.idle_s):
                message = await self.receive()
        except TimeoutError:
            raise self._too_slow(f"no part of the request body arrived for {self.pace.idle_s:g} s") from None
        if message["type"] == "http.disconnect":
            raise ClientGone
        self.finished = not message.get("more_body", False)
        chunk: bytes = message.get("body", b"")  # type: ignore[assignment]
        self.received += len(chunk)
        elapsed = loop.time() - self.started_at
        if (
            not self.finished
            and self.pace.min_bytes_per_s
            and elapsed > self.pace.idle_s
            and self.received < self.pace.min_bytes_per_s * elapsed
        ):
            raise self._too_slow(f"the request body arrives slower than {self.pace.min_bytes_per_s} bytes/s")
        return chunk

    def _too_slow(self, why: str) -> GatewayError:
        self.stalled = True
        return GatewayError(ErrorCode.INVALID_REQUEST, why, status=408)

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
        if self.stalled:
            return  # it came too slowly already: the answer goes out and the connection closes
        left = DRAIN_FACTOR * self.max_body_bytes
        try:
            async with asyncio.timeout(DRAIN_SECONDS):
                while not self.finished and left > 0:
                    left -= len(await self._chunk())
        except (TimeoutError, GatewayError):  # too slow (``pace``) or too long: answered, then closed
            return

    def release(self) -> None:
        """Give this request's share of the in-flight budget back."""
        if self.reserved:
            self.budget.give(self.reserved, self.holder)
            self.reserved = 0

    def base_url(self) -> str:
        """Where the client reached this gateway, without a trailing slash."""
        scope = self.scope
        host = self.headers.get("host")
        if host is None:
            server = scope.get("server")
            host = f"{server[0]}:{server[1]}" if server else "localhost"
        return f"{scope.get('scheme', 'http')}://{host}{scope.get('root_path', '')}".rstrip("/")
