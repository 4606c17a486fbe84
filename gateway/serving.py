"""The HTTP/1.1 connection itself, bounded: header bytes, slow headers, idle keep-alive.

uvicorn's httptools protocol, with what it leaves open closed (``server.max_header_bytes``,
``server.header_timeout_s``; idle keep-alive is uvicorn's own ``timeout_keep_alive``, set from
``server.keep_alive_timeout_s``). Before a request's headers are complete nothing of it has
reached the app, so these bounds hold for every client, authenticated or not:

- the request line and headers together are at most ``max_header_bytes``; past it the client gets
  a 431 (in the dialect's envelope when its path is a dialect route, else OpenAI's) and the
  connection closes, with nothing more read or kept;
- a connection must complete a request's headers within ``header_timeout_s`` of opening (or of
  its previous answer): one that sends nothing, or its headers a byte at a time, gets a 408 and is
  closed.

A body's pace is bounded where it is read (``gateway.inbound``). The limits are read per
connection from ``LIMITS``, set by ``configure`` when the app is made (in each worker process).
"""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from schemas.canonical import ErrorCode, GatewayError
from schemas.dialect import error_answer

__all__ = ["LIMITS", "BoundedHttpToolsProtocol", "ConnectionLimits", "configure"]


class ConnectionLimits(NamedTuple):
    max_header_bytes: int = 64 * 1024
    header_timeout_s: float = 10.0


LIMITS = ConnectionLimits()


def configure(max_header_bytes: int, header_timeout_s: float) -> None:
    """Set the limits every new connection of this process gets (``create_app`` calls it)."""
    global LIMITS
    LIMITS = ConnectionLimits(max_header_bytes, header_timeout_s)


class _HeadersTooLarge(Exception):
    """Raised from a parser callback: the request line and headers passed ``max_header_bytes`` (the parser
    stops, and uvicorn's ``send_400_response`` is where the refusal is written: a 431 here)."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a cap on header bytes and a deadline for complete headers."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._limits = LIMITS
        self._header_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm_header_timer()  # a connection that never sends a byte is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self._limits.header_timeout_s, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being served: its body's pace is bounded where it is read
        if getattr(self, "url", b"") or self.headers:  # a request began and its headers did not complete in time
            error = GatewayError(
                ErrorCode.INVALID_REQUEST,
                f"the request's headers did not arrive within {self._limits.header_timeout_s:g} s",
                status=408,
            )
            self._refuse(error)
        else:
            self.transport.close()  # nothing was asked: nothing to answer

    def send_400_response(self, msg: str) -> None:
        """The parser failed: because a callback found the headers too large (a 431), or as uvicorn says."""
        if self._header_bytes > self._limits.max_header_bytes:
            self._refuse(
                GatewayError(
                    ErrorCode.INVALID_REQUEST,
                    f"the request line and headers are larger than {self._limits.max_header_bytes} bytes",
                    status=431,
                )
            )
            return
        super().send_400_response(msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._arm_header_timer()

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self._limits.max_header_bytes:
            raise _HeadersTooLarge

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()  # the next request's headers (idle keep-alive closes it earlier)

    def _refuse(self, error: GatewayError) -> None:
        """Answer ``error`` in the envelope of the path asked for (when known), then close: nothing more is read."""
        from gateway.request.mounts import errors_for_path  # the dialect tables: imported once a refusal happens

        self._disarm_header_timer()
        try:
            url = getattr(self, "url", b"")
            path = httptools.parse_url(url).path.decode("latin-1") if url else "/"
        except httptools.HttpParserInvalidURLError:
            path = "/"
        status, headers, body = error_answer(error, errors_for_path(path))
        lines = [f"HTTP/1.1 {status} {_REASONS[status]}".encode()]
        lines += [f"{name}: {value}".encode("latin-1") for name, value in headers.items()]
        lines += [
            b"content-type: application/json",
            f"content-length: {len(body)}".encode(),
            b"connection: close",
        ]
        self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + bytes(body))
        self.transport.close()
        self.url, self.headers = b"", []  # what was read of it is dropped at once


_REASONS = {408: "Request Timeout", 431: "Request Header Fields Too Large"}


def uvicorn_options(server: Any) -> dict[str, Any]:
    """The uvicorn options that bound connections, from ``server`` (the config's ``ServerConfig``)."""
    return {
        "http": BoundedHttpToolsProtocol,
        "timeout_keep_alive": server.keep_alive_timeout_s,
        "h11_max_incomplete_event_size": server.max_header_bytes,  # unused with httptools, kept consistent
    }
