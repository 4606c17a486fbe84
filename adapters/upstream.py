"""The one client interface every adapter sends through, and the clients behind it.

An adapter says what to send (method, URL, body, headers, timeouts, the most it will read)
and gets back a whole answer or one of two exceptions; which HTTP library carries it is
chosen once, by configuration (``server.upstream_transport``), and measured in
docs/benchmarks.md:

- ``aiohttp`` (default): aiohttp's own client session. On one core it carried about twice
  the rate of httpx over the same aiohttp transport, for half the CPU per request.
- ``httpx-aiohttp``: an ``httpx.AsyncClient`` over aiohttp's transport (httpx-aiohttp).
- ``httpx``: an ``httpx.AsyncClient`` with httpx's own transport (httpcore).
- ``raw``: an HTTP/1.1 client of our own on asyncio protocols and httptools (``adapters/rawhttp.py``).

Every client keeps no cookies (nothing a provider sets while serving one client reaches
the next), follows no redirects, reuses connections to every upstream, and reads an
answer into one buffer sized from its ``Content-Length`` when it has one: a large answer
is held once, not as chunks plus their join.
"""

from __future__ import annotations

import contextlib
import mmap
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple, Protocol
from urllib.parse import urlsplit

import aiohttp
import httpx

from schemas.imageforms import sliceable

__all__ = [
    "MAPPED_MIN",
    "TRANSPORTS",
    "Answer",
    "AnswerTooLarge",
    "UpstreamClient",
    "UpstreamFailure",
    "build_upstream_client",
    "encode_multipart",
]

Transport = Literal["aiohttp", "httpx-aiohttp", "httpx", "raw"]
TRANSPORTS: tuple[Transport, ...] = ("aiohttp", "httpx-aiohttp", "httpx", "raw")

# One pool for every upstream: connections are reused across requests and providers.
MAX_CONNECTIONS = 512
MAX_IDLE_CONNECTIONS = 128
KEEPALIVE_S = 30.0


class Answer(NamedTuple):
    """An upstream's whole answer. ``headers`` looks names up case-insensitively.

    ``body`` is a view of a mapping of its own when it is large and successful (``_Buffer``).
    ``plain``: the body is ASCII with no backslash, checked chunk by chunk as it arrived (so a
    JSON body may be read with slices, ``schemas.imageforms.sliceable``, without a second scan).
    """

    status: int
    headers: Mapping[str, str]
    body: bytearray | memoryview
    plain: bool = False


class UpstreamFailure(Exception):
    """The exchange failed below HTTP: no connection, a timeout, a reset, a cut-off answer.

    ``reached`` is False when the request never left (the connection could not be made), so
    another server may take it; ``timed_out`` when a connect or read timeout ran out. The
    message names the library's exception, never a URL's credentials or a header.
    """

    def __init__(self, reason: str, *, reached: bool, timed_out: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reached = reached
        self.timed_out = timed_out


def aiohttp_failure(exc: aiohttp.ClientError | TimeoutError) -> UpstreamFailure:
    """aiohttp's exceptions → ``UpstreamFailure``: the one table, for its own client and under httpx."""
    reason = type(exc).__name__
    if isinstance(exc, aiohttp.ClientConnectorError):  # refused, unreachable, name not resolved
        return UpstreamFailure(reason, reached=False, timed_out=False)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamFailure(reason, reached=False, timed_out=True)
    # a read timeout, or a reset, a disconnect, a cut-off or malformed answer
    return UpstreamFailure(reason, reached=True, timed_out=isinstance(exc, TimeoutError))


class AnswerTooLarge(Exception):
    """The answer declared, or grew, past the most the caller would read."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"answer larger than {limit} bytes")
        self.limit = limit


class UpstreamClient(Protocol):
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
        """Send one request and read its whole answer (any status).

        Raises ``UpstreamFailure`` or ``AnswerTooLarge``; ``read_timeout`` bounds each wait
        for bytes (the first included), ``connect_timeout`` the connection's making.
        """
        ...

    async def aclose(self) -> None: ...


def build_upstream_client(transport: str) -> UpstreamClient:
    """The client every adapter shares, for the configured transport."""
    if transport == "aiohttp":
        return AiohttpUpstream()
    if transport in ("httpx", "httpx-aiohttp"):
        return HttpxUpstream(aiohttp_transport=transport == "httpx-aiohttp")
    if transport == "raw":
        from adapters.rawhttp import RawUpstream  # it builds on this module

        return RawUpstream()
    raise ValueError(f"unknown upstream transport {transport!r}; one of {', '.join(TRANSPORTS)}")


MAPPED_MIN = 1 << 20  # a successful answer this large gets a mapping of its own (_Buffer)


def _mapping(size: int) -> mmap.mmap:
    """Private anonymous memory for one large answer, in huge pages where the kernel allows.

    Freed with the answer (returned to the OS at once, like every large buffer: gateway/memory.py),
    and cheap to fill: a bytearray of 16 MiB is zeroed page by page, 4,096 page faults that cost
    about 13 ms on these machines, against 2 ms with huge pages (docs/benchmarks.md).
    """
    mapping = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        with contextlib.suppress(OSError):
            mapping.madvise(mmap.MADV_HUGEPAGE)
    return mapping


class _Buffer:
    """One buffer for a whole answer: sized once from Content-Length when declared.

    A large successful answer is read into a mapping of its own (``_mapping``) and handed on as a
    view of it; anything else into a bytearray. Whether the body is plain (ASCII, no backslash)
    is checked on each chunk as it arrives, while it is in the cache.
    """

    __slots__ = ("body", "limit", "plain", "size")

    def __init__(self, declared: int | None, limit: int, ok: bool = False) -> None:
        if declared is not None and declared > limit:
            raise AnswerTooLarge(limit)
        self.limit = limit
        self.size = 0
        self.plain = True
        self.body: bytearray | mmap.mmap
        if ok and declared is not None and declared >= MAPPED_MIN:
            self.body = _mapping(declared)
        else:
            self.body = bytearray(declared) if declared else bytearray()

    def add(self, chunk: bytes) -> None:
        end = self.size + len(chunk)
        if end > self.limit:
            raise AnswerTooLarge(self.limit)
        if self.plain:  # what a slice needs, checked while the chunk is in the cache
            self.plain = sliceable(chunk)
        if end <= len(self.body):
            self.body[self.size : end] = chunk
            self.size = end
            return
        if isinstance(self.body, mmap.mmap):  # more than declared: the library raises, but stay exact
            self.body = bytearray(memoryview(self.body)[: self.size])
        del self.body[self.size :]
        self.body += chunk
        self.size = end

    def finish(self) -> bytearray | memoryview:
        if isinstance(self.body, mmap.mmap):
            return memoryview(self.body)[: self.size]
        if self.size < len(self.body):  # fewer bytes than declared: the library raises first, but be exact
            del self.body[self.size :]
        return self.body

    def answer(self, status: int, headers: Mapping[str, str]) -> Answer:
        return Answer(status, headers, self.finish(), self.plain)


# --------------------------------------------------------------------------- aiohttp


class AiohttpUpstream:
    """aiohttp's client session, made on first use inside the running loop.

    ``HTTP_PROXY``, ``HTTPS_PROXY`` and ``NO_PROXY`` are read once, here, and each upstream
    host's proxy is looked up once: aiohttp's own ``trust_env`` would ask the environment
    (and ``.netrc``) on a thread for every request.
    """

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[float, float], aiohttp.ClientTimeout] = {}
        self._env_proxies = urllib.request.getproxies_environment()
        self._proxies: dict[tuple[str, str], str | None] = {}

    def proxy_for(self, url: str) -> str | None:
        """The proxy for ``url`` from the environment, or None."""
        if not self._env_proxies:
            return None
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        if key not in self._proxies:
            bypass = urllib.request.proxy_bypass_environment(parts.hostname or "", self._env_proxies)  # type: ignore[attr-defined]  # in the stdlib, not in its stubs
            proxy = None if bypass else self._env_proxies.get(parts.scheme)
            if len(self._proxies) >= 1024:  # provider hosts are few; image URLs could name many
                self._proxies.clear()
            self._proxies[key] = proxy
        return self._proxies[key]

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, keepalive_timeout=KEEPALIVE_S)
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None),
        )
        return self._session

    def _timeout(self, connect: float, read: float) -> aiohttp.ClientTimeout:
        key = (connect, read)
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=read)
            if len(self._timeouts) < 64:  # the configured pairs repeat; per-call deadlines do not
                self._timeouts[key] = timeout
        return timeout

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
        session = self._session or self._open()
        try:
            async with session.request(
                method,
                url,
                data=body,
                headers=headers,
                timeout=self._timeout(connect_timeout, read_timeout),
                allow_redirects=False,
                proxy=self.proxy_for(url),
            ) as response:
                buffer = _Buffer(response.content_length, max_bytes, ok=response.status < 300)
                content = response.content
                while True:  # each chunk as it was read (readany would join what is buffered: a copy)
                    chunk, chunk_end = await content.readchunk()
                    if chunk:
                        buffer.add(chunk)
                    elif not chunk_end:  # (b"", False): the end of the body
                        break
                return buffer.answer(response.status, response.headers)
        except (aiohttp.ClientError, TimeoutError) as exc:  # aiohttp's read timeouts are TimeoutErrors too
            raise aiohttp_failure(exc) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# --------------------------------------------------------------------------- httpx


class _NoCookies(httpx.Cookies):
    """Never keeps a cookie (and skips httpx's cookie-jar bookkeeping, about 8% of its CPU)."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class HttpxUpstream:
    """An ``httpx.AsyncClient``, over httpx's own transport or aiohttp's (httpx-aiohttp)."""

    def __init__(self, *, aiohttp_transport: bool) -> None:
        self._aiohttp_transport = aiohttp_transport
        timeout = httpx.Timeout(120.0, connect=5.0)
        if aiohttp_transport:
            from httpx_aiohttp import AiohttpTransport

            def session() -> aiohttp.ClientSession:  # made on first use, inside the running loop
                connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, keepalive_timeout=KEEPALIVE_S)
                return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())

            self.client = httpx.AsyncClient(transport=AiohttpTransport(client=session), timeout=timeout)
        else:
            limits = httpx.Limits(
                max_connections=MAX_CONNECTIONS,
                max_keepalive_connections=MAX_IDLE_CONNECTIONS,
                keepalive_expiry=KEEPALIVE_S,
            )
            self.client = httpx.AsyncClient(limits=limits, timeout=timeout)
        self.client._cookies = _NoCookies()  # httpx has no public switch for its cookie jar

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
        outgoing = self.client.build_request(
            method, url, content=body, headers=headers, timeout=httpx.Timeout(read_timeout, connect=connect_timeout)
        )
        try:
            response = await self.client.send(outgoing, stream=True)
            try:
                declared = response.headers.get("content-length")
                buffer = _Buffer(int(declared) if declared else None, max_bytes, ok=response.status_code < 300)
                async for chunk in response.aiter_bytes():
                    buffer.add(chunk)
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            raise self._failure(exc) from exc
        return buffer.answer(response.status_code, response.headers)

    def _failure(self, exc: Exception) -> UpstreamFailure:
        """httpx-aiohttp reports every aiohttp connection error as ``ConnectTimeout``: read the cause."""
        cause = exc.__cause__
        if self._aiohttp_transport and isinstance(cause, aiohttp.ClientError | TimeoutError):
            return aiohttp_failure(cause)
        reason = type(exc).__name__
        if isinstance(exc, httpx.ConnectTimeout):
            return UpstreamFailure(reason, reached=False, timed_out=True)
        if isinstance(exc, httpx.ConnectError):
            return UpstreamFailure(reason, reached=False, timed_out=False)
        return UpstreamFailure(reason, reached=True, timed_out=isinstance(exc, httpx.TimeoutException))

    async def aclose(self) -> None:
        await self.client.aclose()


# --------------------------------------------------------------------------- multipart


MultipartFile = tuple[str, tuple[str, bytes, str]]  # (field, (file name, content, media type))


def encode_multipart(data: Mapping[str, str], files: Sequence[MultipartFile]) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body (RFC 7578) and its Content-Type: text fields, then files."""
    boundary = uuid.uuid4().hex
    dash = f"--{boundary}\r\n".encode()
    parts: list[bytes] = []
    for name, value in data.items():
        parts += [dash, _disposition(name), b"\r\n", value.encode(), b"\r\n"]
    for name, (filename, content, media_type) in files:
        parts += [
            dash,
            _disposition(name, filename),
            f"Content-Type: {media_type}\r\n\r\n".encode(),
            content,
            b"\r\n",
        ]
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _quote(value: str) -> str:
    # RFC 7578 §4.2 as browsers do it: quotes and line breaks percent-encoded.
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def _disposition(name: str, filename: str | None = None) -> bytes:
    line = f'Content-Disposition: form-data; name="{_quote(name)}"'
    if filename is not None:
        line += f'; filename="{_quote(filename)}"'
    return (line + "\r\n").encode()
