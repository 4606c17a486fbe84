"""A hostile HTTP/1.1 upstream on loopback, written on asyncio streams (no HTTP library).

It serves in the test's own event loop. The first part of a request's path picks the misbehaviour;
every request it read is kept in ``requests`` (its connection's number, method, target and body),
so a test can tell which connection carried a call and whether a POST reached it twice.

- ``/plain``: 200 ``plain``, kept alive.
- ``/target``: 200 with the request target as it arrived on the wire.
- ``/interim``: ``100 Continue`` and ``103 Early Hints`` before a 200 ``final``.
- ``/leftover``: 200 ``first``, and in the same write the head of another answer (``stolen``).
- ``/headers/<KiB>``: 200 with that many KiB of header lines.
- ``/stale``: the first request of a connection is answered; at a later one the connection is closed
  unanswered (the upstream read the request: a POST there must not be sent again).
- ``/chunked/<bytes>``: a chunked 200 of that many bytes, then the terminating chunk.
- ``/bad-chunk/<kind>/<bytes>``: a chunked 200 of that many bytes, then a bad chunk size (``kind``:
  ``letters``, ``negative``, ``huge``, ``short``, where ``short`` announces 16 bytes, sends 3 and closes).
- ``/endless/<chunked|close>``: a body that never ends (chunked, or until the connection closes).
- ``/declared/<status>/<length>/<sent>``: that status declaring that Content-Length, ``sent`` bytes, a close
  (kept alive when ``sent`` is the whole length).
- ``/gzip-bomb/<MiB>``: a gzip-encoded 200 that inflates to that many MiB of zeros (about 1 KiB a MiB).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import zlib
from dataclasses import dataclass, field
from typing import Self

__all__ = ["ConnectProxy", "HostileUpstream", "Seen"]

_HEAD_LIMIT = 1 << 20
_FILL = b"x" * 65536


@dataclass(frozen=True)
class Seen:
    """One request the upstream read."""

    connection: int
    method: str
    target: bytes
    body: bytes


@dataclass
class HostileUpstream:
    """The server; ``url`` is its base URL (``https`` when made with a TLS context)."""

    tls: ssl.SSLContext | None = None
    requests: list[Seen] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _connections: int = 0
    _tasks: dict[asyncio.Task[None], asyncio.StreamWriter] = field(default_factory=dict)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls, limit=_HEAD_LIMIT)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await _finish(self._tasks)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks[task] = writer
        number, self._connections = self._connections, self._connections + 1
        try:
            index = 0
            while True:
                seen = await self._read(reader, number)
                if seen is None:
                    return
                self.requests.append(seen)
                if not await self._answer(seen, index, writer):
                    return
                index += 1
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError):
            return
        finally:
            self._tasks.pop(task, None)
            writer.transport.abort()

    @staticmethod
    async def _read(reader: asyncio.StreamReader, number: int) -> Seen | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        lines = head.split(b"\r\n")
        method, target, _ = lines[0].split(b" ", 2)
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length) if length else b""
        return Seen(number, method.decode(), target, body)

    async def _answer(self, seen: Seen, index: int, writer: asyncio.StreamWriter) -> bool:
        """Write the answer the path asks for; False when the connection is to end."""
        parts = seen.target.split(b"?", 1)[0].strip(b"/").split(b"/")
        mode, args = parts[0].decode("latin-1"), [part.decode("latin-1") for part in parts[1:]]
        if mode == "stale" and index > 0:
            return False
        if mode in ("plain", "stale"):
            writer.write(_whole(b"plain"))
        elif mode == "target":
            writer.write(_whole(seen.target))
        elif mode == "interim":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
            writer.write(_whole(b"final"))
        elif mode == "leftover":
            writer.write(_whole(b"first") + b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nstolen")
        elif mode == "headers":
            filler = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 1000) for i in range(int(args[0])))
            writer.write(b"HTTP/1.1 200 OK\r\n" + filler + b"Content-Length: 2\r\n\r\nok")
        elif mode == "chunked":
            await self._chunks(writer, int(args[0]))
            writer.write(b"0\r\n\r\n")
        elif mode == "bad-chunk":
            await self._chunks(writer, int(args[1]))
            writer.write(_BAD_CHUNKS[args[0]])
            await writer.drain()
            return False
        elif mode == "endless":
            await self._endless(writer, chunked=args[0] == "chunked")
            return False
        elif mode == "declared":
            status, length, sent = (int(arg) for arg in args)
            writer.write(
                b"HTTP/1.1 %d Oops\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (status, length)
            )
            writer.write(b"{" + b"x" * (sent - 1) if sent else b"")
            await writer.drain()
            return sent == length  # a whole answer: the connection stays open for the next request
        elif mode == "gzip-bomb":
            bomb = _bomb(int(args[0]))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(bomb))
            writer.write(bomb)
        else:
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        return True

    @staticmethod
    async def _chunks(writer: asyncio.StreamWriter, size: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n")
        for offset in range(0, size, len(_FILL)):
            piece = _FILL[: min(len(_FILL), size - offset)]
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()

    @staticmethod
    async def _endless(writer: asyncio.StreamWriter, *, chunked: bool) -> None:
        head = b"Transfer-Encoding: chunked\r\n" if chunked else b"Connection: close\r\n"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n" + head + b"\r\n")
        piece = b"%x\r\n%s\r\n" % (len(_FILL), _FILL) if chunked else _FILL
        while True:  # until the client hangs up
            writer.write(piece)
            await writer.drain()


_BAD_CHUNKS = {
    "letters": b"zz\r\nhello\r\n0\r\n\r\n",
    "negative": b"-5\r\nhello\r\n0\r\n\r\n",
    "huge": b"ffffffffffffffffffffffff\r\nhello\r\n",
    "short": b"10\r\nabc",
}


def _bomb(mib: int) -> bytes:
    """gzip of ``mib`` MiB of zeros, made a MiB at a time (never held inflated)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: a gzip header and trailer
    zeros = bytes(1 << 20)
    return b"".join(compressor.compress(zeros) for _ in range(mib)) + compressor.flush()


def _whole(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


@dataclass
class ConnectProxy:
    """A forward proxy on loopback that tunnels ``CONNECT`` to ``target_port`` on 127.0.0.1, whatever host
    was named, and refuses anything else with a 502; ``lines`` keeps every request line it got."""

    target_port: int
    lines: list[bytes] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _tasks: dict[asyncio.Task[None], asyncio.StreamWriter] = field(default_factory=dict)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await _finish(self._tasks)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks[task] = writer
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0]
            self.lines.append(line)
            if not line.startswith(b"CONNECT "):
                writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                await writer.drain()
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.transport.abort()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._tasks.pop(task, None)
            writer.transport.abort()


async def _finish(tasks: dict[asyncio.Task[None], asyncio.StreamWriter]) -> None:
    """End the connections still served: their sockets are aborted, so each task ends on its own."""
    for writer in list(tasks.values()):
        writer.transport.abort()
    if tasks:
        await asyncio.wait(list(tasks), timeout=5)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    with contextlib.suppress(OSError):
        writer.write_eof()
