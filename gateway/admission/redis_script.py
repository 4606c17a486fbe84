"""One Lua script, run by EVALSHA over one pipelined connection: the rate limiter's hot path.

redis-py spends 70 to 120 µs of CPU on each script call (pool checkout, command packing, its
parser); this client spends 11 to 34 µs and halves the wall time. It keeps one connection,
writes each call at once (many in flight) and matches the replies to the calls in order,
parsing them with hiredis. See docs/reliability.md.

Every failure it raises is a ``redis.exceptions.RedisError``, as redis-py's would be:
``TimeoutError`` when a reply does not come in time, ``ConnectionError`` when the
connection cannot be made or is lost (then every call waiting on it fails at once, and the
next call connects again), ``ResponseError`` when Redis answers an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import AuthenticationError, InvalidResponse, NoScriptError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["DEFAULT_TIMEOUT_S", "RedisScript", "RedisURL"]

DEFAULT_TIMEOUT_S = 0.25
# A timed-out call keeps its place in line (its late reply is dropped), so one slow answer
# costs no reconnect; a connection that has answered nothing for this many call timeouts
# is taken for dead (a peer gone without a FIN) and dropped, and the next call reconnects.
STALLED_AFTER_TIMEOUTS = 4
# What the URL may carry after `?`: anything else (TLS or socket options) would be honoured
# by redis-py for cooldowns and ignored here, so it is refused instead.
URL_OPTIONS = frozenset({"db", "username", "password"})
SCHEMES = ("redis://", "rediss://", "unix://")

_INCOMPLETE = object()  # hiredis's answer while the next reply is still partial
Arg = str | bytes | int | float


@dataclass(frozen=True)
class RedisURL:
    """Where the Redis is and how to log in, parsed from a ``redis.url``; never shows the password."""

    host: str = "localhost"
    port: int = 6379
    path: str = ""  # a unix socket, instead of host and port
    tls: bool = False
    db: int = 0
    username: str = ""
    password: str = field(default="", repr=False)

    @classmethod
    def parse(cls, url: str) -> RedisURL:
        """``redis://[[user]:password@]host[:port][/db]``, ``rediss://…`` (TLS) or ``unix:///path[?db=N]``."""
        if not url.startswith(SCHEMES):
            raise ValueError(f"a Redis URL starts with one of {', '.join(SCHEMES)}")
        try:
            options = parse_url(url)
        except ValueError:  # its messages name the option, never a value; ours says what it was parsing
            raise ValueError("malformed Redis URL (expected redis://[[user]:password@]host[:port][/db])") from None
        unknown = set(options) - URL_OPTIONS - {"host", "port", "path", "connection_class"}
        if unknown:
            raise ValueError(f"Redis URL options not supported by the limiter's client: {', '.join(sorted(unknown))}")
        if url.startswith("unix://") and not options.get("path"):
            raise ValueError("a unix:// Redis URL needs the socket's path: unix:///path/to/redis.sock")
        return cls(
            host=str(options.get("host", "localhost")),
            port=int(options.get("port", 6379)),
            path=str(options.get("path", "")) if url.startswith("unix://") else "",
            tls=url.startswith("rediss://"),
            db=int(options.get("db", 0)),
            username=str(options.get("username") or ""),
            password=str(options.get("password") or ""),
        )

    @property
    def where(self) -> str:
        """The address, for error messages (no credentials)."""
        return self.path or f"{self.host}:{self.port}"


def _pack(command: tuple[Arg, ...]) -> bytes:
    """One command as a RESP array (hiredis's stub types the tuple as having one element)."""
    return hiredis.pack_command(command)  # type: ignore[arg-type]


def _reply_error(message: str) -> ResponseError:
    return NoScriptError(message) if message.startswith("NOSCRIPT") else ResponseError(message)


class _Connection(asyncio.Protocol):
    """One connection's replies, handed to the calls waiting for them in the order they were sent."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.open = False
        self.lost: asyncio.Future[None] = loop.create_future()
        # When the line of waiting calls last moved (or began): how long Redis has been silent.
        self.progress_at = 0.0
        self._reader = hiredis.Reader(protocolError=InvalidResponse, replyError=_reply_error, notEnoughData=_INCOMPLETE)
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._transport: asyncio.Transport | None = None
        # Commands sent during one turn of the loop go out in one write (one system call, one wake-up of Redis).
        self._unsent: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        self.open = True

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """Write one packed command; the future gets its reply (an error reply as the exception)."""
        if not self.open or self._transport is None:
            raise RedisConnectionError("connection to Redis lost")
        future = self.loop.create_future()
        if not self._waiting:
            self.progress_at = self.loop.time()
        self._waiting.append(future)
        if not self._unsent:
            self.loop.call_soon(self._flush)
        self._unsent.append(command)
        return future

    def _flush(self) -> None:
        unsent, self._unsent = self._unsent, []
        if self.open and self._transport is not None:  # else their futures have failed already
            self._transport.write(unsent[0] if len(unsent) == 1 else b"".join(unsent))

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not _INCOMPLETE:
                future = self._waiting.popleft()
                if future.done():  # its caller timed out or went away: the late reply is dropped
                    continue
                if isinstance(reply, ResponseError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except InvalidResponse as exc:
            self.close(RedisConnectionError(f"Redis sent something that is not RESP: {exc}"))
        except IndexError:
            self.close(RedisConnectionError("Redis sent a reply nobody asked for"))
        self.progress_at = self.loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self._fail("connection to Redis lost")
        if not self.lost.done():
            self.lost.set_result(None)

    def close(self, reason: RedisConnectionError) -> None:
        """Fail every waiting call with ``reason`` and drop the connection (nothing unsent is worth flushing)."""
        self.open = False
        self._fail(str(reason))
        if self._transport is not None:
            self._transport.abort()

    def _fail(self, reason: str) -> None:
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(RedisConnectionError(reason))  # one each: a shared one would pile up tracebacks


class RedisScript:
    """Runs one Lua script: ``await script(keys=[...], args=[...])`` answers the script's reply.

    Connects on the first call, and again on the first call after the connection was lost.
    """

    def __init__(
        self,
        source: str,
        url: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        connect_timeout_s: float | None = None,
    ) -> None:
        self.source = source.encode()
        self.sha = hashlib.sha1(self.source).hexdigest()
        self.url = RedisURL.parse(url)
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s if connect_timeout_s is not None else timeout_s
        self._ssl = ssl.create_default_context() if self.url.tls else None
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None

    def __repr__(self) -> str:
        return f"RedisScript(sha={self.sha[:12]}, url={self.url!r})"

    async def __call__(self, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()) -> Any:
        connection = self._connection
        if connection is None or not connection.open:
            connection = await self._connect()
        try:
            return await self._round_trip(connection, _pack(("EVALSHA", self.sha, len(keys), *keys, *args)))
        except NoScriptError:
            # Redis lost the script (SCRIPT FLUSH, a restart): EVAL runs it and caches it again.
            return await self._round_trip(connection, _pack(("EVAL", self.source, len(keys), *keys, *args)))

    async def _round_trip(self, connection: _Connection, command: bytes) -> Any:
        future = connection.send(command)
        timer = connection.loop.call_later(self.timeout_s, self._expire, connection, future)
        try:
            return await future
        finally:
            timer.cancel()

    def _expire(self, connection: _Connection, future: asyncio.Future[Any]) -> None:
        if future.done():
            return
        # The future stays in line, done: its reply, if it ever comes, is dropped.
        future.set_exception(RedisTimeoutError(f"Redis did not answer within {self.timeout_s:g} s"))
        silent_s = connection.loop.time() - connection.progress_at
        if connection.open and silent_s >= STALLED_AFTER_TIMEOUTS * self.timeout_s:
            connection.close(RedisConnectionError(f"Redis answered nothing for {silent_s:.1f} s"))

    async def _connect(self) -> _Connection:
        """The one connection attempt under way, shared: concurrent first calls open one connection."""
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._open())
            self._connecting.add_done_callback(self._connected)
        return await asyncio.shield(self._connecting)  # a caller that gives up does not stop it for the others

    def _connected(self, task: asyncio.Task[_Connection]) -> None:
        self._connecting = None
        if not task.cancelled() and task.exception() is None:  # reading it marks it retrieved
            self._connection = task.result()

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        url = self.url
        connection: _Connection | None = None
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                if url.path:
                    _, connection = await loop.create_unix_connection(lambda: _Connection(loop), url.path)
                else:
                    _, connection = await loop.create_connection(
                        lambda: _Connection(loop), url.host, url.port, ssl=self._ssl
                    )
                await self._log_in(connection)
            return connection
        except BaseException as exc:
            if connection is not None:
                connection.close(RedisConnectionError("connection abandoned"))
            if isinstance(exc, TimeoutError):  # asyncio.timeout's, the builtin: an OSError, so first
                raise RedisTimeoutError(
                    f"no connection to Redis at {url.where} within {self.connect_timeout_s:g} s"
                ) from exc
            if isinstance(exc, OSError):  # refused, unreachable, TLS (ssl.SSLError)
                raise RedisConnectionError(f"cannot connect to Redis at {url.where}: {exc.strerror or exc}") from exc
            raise

    async def _log_in(self, connection: _Connection) -> None:
        """AUTH and SELECT, one after the other (once per connection: no need to pipeline them)."""
        url = self.url
        if url.username or url.password:
            login = ("AUTH", url.username, url.password) if url.username else ("AUTH", url.password)
            try:
                await connection.send(_pack(login))
            except ResponseError as exc:  # Redis's own messages never repeat the password
                raise AuthenticationError(f"Redis at {url.where} refused the login: {exc}") from None
        if url.db:
            try:
                await connection.send(_pack(("SELECT", url.db)))
            except ResponseError as exc:
                raise RedisConnectionError(f"Redis at {url.where} refused database {url.db}: {exc}") from None

    async def aclose(self) -> None:
        """Close the connection; calls still waiting fail with ``ConnectionError``."""
        if self._connecting is not None:  # let it finish (within its timeout), then close what it opened
            with contextlib.suppress(RedisError):
                await asyncio.shield(self._connecting)
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close(RedisConnectionError("Redis script client closed"))
            await connection.lost
