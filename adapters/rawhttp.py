"""An HTTP/1.1 client of our own for the upstream calls: asyncio protocols and httptools' parser.

``server.upstream_transport: raw``. One exchange on a kept-alive connection costs a fraction
of aiohttp's request machinery (docs/benchmarks.md), and the answer is read straight into the
one buffer ``adapters.upstream`` sizes for it. What it does, and no more: GET and POST with a
whole body, ``Content-Length`` or chunked answers, keep-alive connections per (scheme, host,
port), TLS through the event loop (the system's CA bundle), connect and read timeouts, the
answer size cap. It follows no redirect and keeps no cookie. A stale kept-alive connection (the
server closed it while it was idle and nothing of the answer came back) is retried once on a
new connection. Through a proxy (``HTTP_PROXY``/``HTTPS_PROXY``) the call goes to aiohttp.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict

from adapters.upstream import (
    KEEPALIVE_S,
    MAX_IDLE_CONNECTIONS,
    AiohttpUpstream,
    Answer,
    AnswerTooLarge,
    UpstreamFailure,
    _Buffer,
)

__all__ = ["RawUpstream"]

_Origin = tuple[str, str, int]  # scheme, host, port


class _Stale(Exception):
    """A kept-alive connection the server had closed: nothing of the answer came back."""


class ServerDisconnectedError(ConnectionError):
    """The server closed the connection before its answer was whole."""


class ReadTimeoutError(TimeoutError):
    """No byte of the answer came within the read timeout."""


class MalformedAnswerError(ValueError):
    """What came back is not an HTTP/1.1 answer."""


def _failure(cause: BaseException, *, reached: bool = True, timed_out: bool = False) -> UpstreamFailure:
    """``UpstreamFailure`` caused by ``cause`` (the log names the innermost cause of a failed attempt)."""
    failure = UpstreamFailure(type(cause).__name__, reached=reached, timed_out=timed_out)
    failure.__cause__ = cause
    return failure


class _Connection(asyncio.Protocol):
    """One kept-alive connection: at most one exchange at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.exchanges = 0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Answer] | None = None
        self._headers: CIMultiDict[str] = CIMultiDict()
        self._buffer: _Buffer | None = None
        self._limit = 0
        self._received = False
        self._keep_alive = True
        self._read_timeout = 0.0
        self._last_data = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._error: BaseException | None = None

    # --- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes nobody asked for: the connection cannot be trusted
            self.close()
            return
        self._received = True
        self._last_data = self.loop.time()
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(_failure(MalformedAnswerError(f"malformed answer ({type(exc).__name__})")))
        except AnswerTooLarge as exc:
            self._fail(exc)
        if self._error is not None:
            self._fail(self._error)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done() and exc is None and self._until_close():
            self.on_message_complete()  # an answer with neither a length nor chunks ends where the connection does
        if self._waiter is not None and not self._waiter.done():
            if not self._received and self.exchanges > 1:
                self._waiter.set_exception(_Stale())
            else:
                self._waiter.set_exception(_failure(exc if exc is not None else ServerDisconnectedError()))
        self._stop_timer()

    def _until_close(self) -> bool:
        """Whether the answer's headers are in and its body runs until the connection closes."""
        if self._buffer is None or self._error is not None:
            return False
        headers = self._headers
        return "content-length" not in headers and "chunked" not in headers.get("transfer-encoding", "").lower()

    # --- httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.add(name.decode("latin-1"), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        declared = self._headers.get("content-length")
        try:
            self._buffer = _Buffer(
                int(declared) if declared is not None else None, self._limit, ok=self._parser.get_status_code() < 300
            )
        except AnswerTooLarge as exc:
            self._error = exc
        except ValueError:
            self._error = _failure(MalformedAnswerError("malformed Content-Length"))
        self._keep_alive = self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        if self._buffer is not None and self._error is None:
            try:
                self._buffer.add(body)
            except AnswerTooLarge as exc:
                self._error = exc

    def on_message_complete(self) -> None:
        waiter, buffer = self._waiter, self._buffer
        if waiter is None or waiter.done() or self._error is not None:
            return
        if buffer is None:  # no headers seen: cannot happen with a complete message, but stay exact
            buffer = _Buffer(0, self._limit)
        waiter.set_result(buffer.answer(self._parser.get_status_code(), self._headers))

    # --- the exchange
    async def exchange(self, request: list[bytes], limit: int, read_timeout: float) -> Answer:
        assert self.transport is not None
        self.exchanges += 1
        self._waiter = waiter = self.loop.create_future()
        self._headers, self._buffer, self._error = CIMultiDict(), None, None
        self._limit, self._received, self._keep_alive = limit, False, True
        self._read_timeout, self._last_data = read_timeout, self.loop.time()
        self._timer = self.loop.call_at(self._last_data + read_timeout, self._check_timeout)
        self.transport.writelines(request)
        try:
            return await waiter
        finally:
            self._stop_timer()
            self._waiter = None
            if not waiter.done() or waiter.cancelled() or waiter.exception() is not None or not self._keep_alive:
                self.close()  # cancelled, failed or told to close: never reused

    def _check_timeout(self) -> None:
        self._timer = None
        if self._waiter is None or self._waiter.done():
            return
        due = self._last_data + self._read_timeout
        if self.loop.time() < due:  # bytes came meanwhile: wait the rest
            self._timer = self.loop.call_at(due, self._check_timeout)
            return
        self._waiter.set_exception(_failure(ReadTimeoutError(), timed_out=True))

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fail(self, error: BaseException) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close at once (a TLS connection's close waits for the loop to say goodbye; at shutdown it may not)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class RawUpstream:
    """Kept-alive connections per origin; each call takes an idle one or opens one."""

    def __init__(self) -> None:
        self._idle: dict[_Origin, deque[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._proxied = AiohttpUpstream()  # calls through a proxy, and their proxy lookups
        self._targets: dict[str, tuple[_Origin, bytes]] = {}

    def _target(self, url: str) -> tuple[_Origin, bytes]:
        """(origin, the request line's target and Host header) of a URL, parsed once per URL."""
        found = self._targets.get(url)
        if found is None:
            parts = urlsplit(url)
            scheme = parts.scheme.lower()
            if scheme not in ("http", "https") or not parts.hostname:
                raise UpstreamFailure("unsupported URL", reached=False, timed_out=False)
            port = parts.port or (443 if scheme == "https" else 80)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
            if ":" in parts.hostname and not host.startswith("["):  # an IPv6 literal
                host = f"[{parts.hostname}]" + (f":{parts.port}" if parts.port else "")
            found = ((scheme, parts.hostname, port), f"{path} HTTP/1.1\r\nHost: {host}\r\n".encode("latin-1"))
            if len(self._targets) < 1024:  # provider URLs are few; image URLs could be many
                self._targets[url] = found
        return found

    async def send(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        connect_timeout: float,
        read_timeout: float,
        max_bytes: int,
    ) -> Answer:
        if self._proxied.proxy_for(url) is not None:
            return await self._proxied.send(
                method, url, body=body, headers=headers, connect_timeout=connect_timeout,
                read_timeout=read_timeout, max_bytes=max_bytes,
            )  # fmt: skip
        origin, target = self._target(url)
        request = self._request(method, target, body, headers)
        for _ in range(2):  # a stale kept-alive connection, once
            connection = self._take(origin) or await self._open(origin, connect_timeout)
            try:
                answer = await connection.exchange(request, max_bytes, read_timeout)
            except _Stale:
                continue
            self._give_back(origin, connection)
            return answer
        raise _failure(ServerDisconnectedError())

    @staticmethod
    def _request(method: str, target: bytes, body: bytes | None, headers: Mapping[str, str] | None) -> list[bytes]:
        lines = [method.encode("ascii"), b" ", target]
        for name, value in (headers or {}).items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"header {name!r} holds a line break")
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        if body is not None:
            lines.append(b"Content-Length: %d\r\n" % len(body))
        lines.append(b"\r\n")
        head = b"".join(lines)
        return [head, body] if body else [head]

    def _take(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to be stale
            if not connection.closed and now - connection.idle_since < KEEPALIVE_S:
                return connection
            connection.close()
        return None

    def _give_back(self, origin: _Origin, connection: _Connection) -> None:
        if connection.closed:
            return
        idle = self._idle.setdefault(origin, deque())
        if len(idle) >= MAX_IDLE_CONNECTIONS:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        idle.append(connection)

    async def _open(self, origin: _Origin, connect_timeout: float) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        context: Any = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            async with asyncio.timeout(connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop), host, port, ssl=context, server_hostname=host if context else None
                )
        except TimeoutError as exc:
            raise UpstreamFailure("ConnectionTimeoutError", reached=False, timed_out=True) from exc
        except OSError as exc:  # refused, unreachable, name not resolved, TLS refused
            raise UpstreamFailure(
                f"ClientConnectorError ({type(exc).__name__})", reached=False, timed_out=False
            ) from exc
        return connection

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.abort()
        self._idle.clear()
        await self._proxied.aclose()
