"""The one client interface every adapter sends through, and the clients behind it.

An adapter says what to send (method, URL, body, headers, timeouts, the most it will read)
and gets back a whole answer or one of two exceptions. The client is aiohttp's
(``server.upstream_transport: aiohttp``, the one value left), held to the cases of
tests/adapters/test_transport_conformance.py, a hostile upstream on loopback; a client of our
own (``raw``), httpx's own transport and httpx over aiohttp's transport each failed some of them
and are gone (docs/benchmarks.md, "The transport decision").

The client keeps no cookies (nothing a provider sets while serving one client reaches
the next), follows no redirects, reuses connections to every upstream, skips interim (1xx)
answers, refuses a header block over ``MAX_HEADER_BYTES``, reads an error answer's body only up
to ``ERROR_BODY_MAX``, and reads a successful answer into one buffer (``_Buffer``): a large one
is held once, not as chunks plus their join, and memory follows the bytes that arrived, never
a declared length. A call's buffer is let go of when the call ends.
"""

from __future__ import annotations

import contextlib
import io
import mmap
import ssl
import urllib.request
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, NamedTuple, Protocol
from urllib.parse import urlsplit

import aiohttp

from schemas.imageforms import sliceable

_LARGE_BODY = 1 << 20  # aiohttp.payload.TOO_LARGE_BYTES_BODY

__all__ = [
    "DEFAULT_TRANSPORT",
    "MAPPED_MIN",
    "RETIRED_TRANSPORTS",
    "TRANSPORTS",
    "Answer",
    "AnswerTooLarge",
    "UpstreamClient",
    "UpstreamFailure",
    "build_upstream_client",
    "encode_multipart",
]

Transport = Literal["aiohttp"]
TRANSPORTS: tuple[Transport, ...] = ("aiohttp",)
DEFAULT_TRANSPORT: Transport = "aiohttp"
# Transports this gateway once offered, and why they went: a config that names one is refused with this.
RETIRED_TRANSPORTS = {
    "raw": "the client of our own (adapters/rawhttp.py) is gone: it failed the transport conformance cases",
    "httpx": "httpx's own transport is gone: it reads bytes left after an answer as the next call's answer",
    "httpx-aiohttp": "httpx over aiohttp is gone: httpx inflates a compressed chunk whole, past any cap",
}

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
    """aiohttp's exceptions → ``UpstreamFailure``: the one table."""
    reason = type(exc).__name__
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.InvalidURL):  # refused, unreachable, unresolved, unusable
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
    why = f" ({RETIRED_TRANSPORTS[transport]})" if transport in RETIRED_TRANSPORTS else ""
    raise ValueError(f"unknown upstream transport {transport!r}{why}; one of {', '.join(TRANSPORTS)}")


MAPPED_MIN = 1 << 20  # a successful answer this large gets a mapping of its own (_Buffer)
# The most of an error answer's body that is read (status ≥ 300): enough for any provider's error
# JSON; the rest is never read, and the connection that carried it is closed.
ERROR_BODY_MAX = 32 * 1024
# An answer's header block: at most this many bytes in all, each line at most MAX_HEADER_LINE
# (aiohttp's default) and at most MAX_HEADERS lines, so parsing one holds little before the sum is checked.
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADER_LINE = 8190
MAX_HEADERS = 128


def check_url(url: str) -> None:
    """Refuse a URL no request can be made to (no http(s) scheme, no host, a bad port or address)
    as a failure that reached nobody: an image URL is the upstream's word, never the gateway's fault."""
    try:
        parts = urlsplit(url)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018  # a port out of range raises here
    except ValueError:
        usable = False
    if not usable:
        raise UpstreamFailure("unusable URL", reached=False, timed_out=False)


def check_headers(raw: Iterable[tuple[bytes, bytes]]) -> None:
    """Refuse an answer whose header block is over ``MAX_HEADER_BYTES`` (aiohttp bounds each line and
    their number, ``_session``, not their sum)."""
    if sum(len(name) + len(value) + 4 for name, value in raw) > MAX_HEADER_BYTES:
        raise UpstreamFailure(f"answer headers over {MAX_HEADER_BYTES} bytes", reached=True, timed_out=False)


def _mapping(size: int) -> mmap.mmap:
    """Private anonymous memory for one large answer, in huge pages where the kernel allows.

    It reserves address space, not memory: a page is taken when the first byte lands in it, so
    memory follows the bytes that arrived, whatever length was declared. Freed with the answer
    (returned to the OS at once, like every large buffer: gateway/memory.py), and cheap to fill: a
    bytearray of 16 MiB is zeroed page by page, 4,096 page faults that cost about 13 ms on these
    machines, against 2 ms with huge pages (docs/benchmarks.md).
    """
    mapping = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        with contextlib.suppress(OSError):
            mapping.madvise(mmap.MADV_HUGEPAGE)
    return mapping


class _Buffer:
    """One buffer for a whole answer.

    A large successful answer that declared its length is read into a mapping of its own
    (``_mapping``) and handed on as a view of it; anything else grows in a bytearray as bytes
    arrive (nothing is allocated from a declared length). An error answer (status ≥ 300) keeps
    its first ``ERROR_BODY_MAX`` bytes and is then ``full``: the caller stops reading. Whether the
    body is plain (ASCII, no backslash) is checked on each chunk as it arrives, while it is in the
    cache. ``release`` lets go of the body when the call ends, so that nothing a failed call read
    stays reachable (from its exception's traceback, say) once the answer, if any, is dropped.
    """

    __slots__ = ("body", "full", "limit", "plain", "size", "truncates")

    def __init__(self, declared: int | None, limit: int, ok: bool = False) -> None:
        self.truncates = not ok
        if ok and declared is not None and declared > limit:
            raise AnswerTooLarge(limit)
        self.limit = limit if ok else min(limit, ERROR_BODY_MAX)
        self.size = 0
        self.plain = True
        self.full = False
        self.body: bytearray | mmap.mmap
        if ok and declared is not None and declared >= MAPPED_MIN:
            self.body = _mapping(declared)
        else:
            self.body = bytearray()

    def add(self, chunk: bytes) -> None:
        end = self.size + len(chunk)
        if end > self.limit:
            if not self.truncates:
                raise AnswerTooLarge(self.limit)
            chunk, end, self.full = chunk[: self.limit - self.size], self.limit, True
        if self.plain:  # what a slice needs, checked while the chunk is in the cache
            self.plain = sliceable(chunk)
        if isinstance(self.body, mmap.mmap):
            if end <= len(self.body):
                self.body[self.size : end] = chunk
                self.size = end
                return
            # more than declared: the library raises, but stay exact
            self.body = bytearray(memoryview(self.body)[: self.size])
        self.body += chunk
        self.size = end

    def answer(self, status: int, headers: Mapping[str, str]) -> Answer:
        body = memoryview(self.body)[: self.size] if isinstance(self.body, mmap.mmap) else self.body
        return Answer(status, headers, body, self.plain)

    def release(self) -> None:
        """Let go of the body: the answer, when there is one, holds its own reference."""
        self.body = bytearray()


# --------------------------------------------------------------------------- aiohttp


def _session(tls: ssl.SSLContext) -> aiohttp.ClientSession:
    """aiohttp's session: one pool, no cookies, no total timeout, bounded header lines."""
    connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, keepalive_timeout=KEEPALIVE_S, ssl=tls)
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None),
        max_line_size=MAX_HEADER_LINE,
        max_field_size=MAX_HEADER_LINE,
        max_headers=MAX_HEADERS,
    )


class AiohttpUpstream:
    """aiohttp's client session, made on first use inside the running loop.

    ``HTTP_PROXY``, ``HTTPS_PROXY`` and ``NO_PROXY`` are read once, here, and each upstream
    host's proxy is looked up once: aiohttp's own ``trust_env`` would ask the environment
    (and ``.netrc``) on a thread for every request. The trusted certificates too are read
    here (the system's, or ``SSL_CERT_FILE``), not when aiohttp was imported.
    """

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._tls = ssl.create_default_context()
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
        check_url(url)
        if self._session is None:
            self._session = _session(self._tls)
        try:
            async with self._session.request(
                method,
                url,
                # A large body is handed over as a stream aiohttp writes in chunks, yielding to the loop between
                # them (as raw bytes, past 1 MiB, aiohttp warns that it may hold the event loop).
                data=io.BytesIO(body) if body is not None and len(body) > _LARGE_BODY else body,
                headers=headers,
                timeout=self._timeout(connect_timeout, read_timeout),
                allow_redirects=False,
                proxy=self.proxy_for(url),
            ) as response:
                buffer = _Buffer(response.content_length, max_bytes, ok=response.status < 300)
                try:
                    check_headers(response.raw_headers)
                    await _read(response.content, buffer)
                    return buffer.answer(response.status, response.headers)
                finally:
                    buffer.release()
                    if not response.content.is_eof():  # not read to its end (an error answer's rest): never reused
                        response.close()
        except (aiohttp.ClientError, TimeoutError) as exc:  # aiohttp's read timeouts are TimeoutErrors too
            raise aiohttp_failure(exc) from exc
        except UnicodeError as exc:  # a host name IDNA cannot encode
            raise UpstreamFailure("unusable URL", reached=False, timed_out=False) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _read(content: aiohttp.StreamReader, buffer: _Buffer) -> None:
    """Each chunk as it was read (readany would join what is buffered: a copy), until the end or a full buffer."""
    while not buffer.full:
        chunk, chunk_end = await content.readchunk()
        if chunk:
            buffer.add(chunk)
        elif not chunk_end:  # (b"", False): the end of the body
            return


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
