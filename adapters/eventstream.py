"""Server-sent events from an upstream, read as they come and bounded: an answer that is a stream.

``EventParser`` cuts a ``text/event-stream`` body into events (the WHATWG rules: ``event:`` and
``data:`` fields, ``data`` lines joined, ``:`` comments skipped, an event ends at a blank line),
holding at most ``max_event_bytes`` of one event and reading at most ``max_events``: past
either, the upstream is at fault. ``EventStreamClient`` posts one request and hands each event
to a callback as it arrives; an answer that is not an event stream (an error, or a server that
answers one JSON body although asked to stream) is read whole, up to a cap, and handed back as an
``Answer`` for the usual decoding.

The shared upstream client (``adapters.upstream``) reads whole answers only, so streams go
through an aiohttp session of their own, owned by the adapter that made it (closed by its
``aclose``): the same rules as the shared one (no cookies, no redirects, the environment's proxies).
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Mapping
from typing import NamedTuple
from urllib.parse import urlsplit

import aiohttp

from adapters.upstream import Answer, AnswerTooLarge, UpstreamFailure

__all__ = ["Event", "EventParser", "EventStreamClient", "StreamTooLarge"]

EVENT_STREAM = "text/event-stream"


class Event(NamedTuple):
    """One event: its ``event:`` name (``message`` when it gave none) and its ``data`` lines joined."""

    name: str
    data: bytes


class StreamTooLarge(Exception):
    """The stream sent a larger event, or more events, than the reader takes."""


class EventParser:
    """Bytes of an event stream in, whole events out; bounded in the bytes of one event and in events."""

    __slots__ = ("_buffer", "_data", "_held", "_name", "_scanned", "events", "max_event_bytes", "max_events")

    def __init__(self, max_event_bytes: int, max_events: int) -> None:
        self.max_event_bytes = max_event_bytes
        self.max_events = max_events
        self.events = 0  # events dispatched so far
        self._buffer = bytearray()  # the line not yet ended
        self._data: list[bytes] = []
        self._name = ""
        self._held = 0  # bytes of the event being read (its data lines and the pending line)
        self._scanned = 0  # the pending line's bytes already searched for its end (a long line is searched once)

    def feed(self, chunk: bytes) -> list[Event]:
        """The events that ``chunk`` completes (in order); ``StreamTooLarge`` past a bound."""
        found: list[Event] = []
        self._buffer += chunk
        start = 0
        buffer = self._buffer
        while True:
            end = _line_end(buffer, max(start, self._scanned))
            if end is None:
                break
            line_end, next_start = end
            event = self._line(bytes(buffer[start:line_end]))
            if event is not None:
                found.append(event)
            start = next_start
        del buffer[:start]
        self._scanned = len(buffer) - 1 if buffer.endswith(b"\r") else len(buffer)  # a last CR is looked at again
        if self._held + len(buffer) > self.max_event_bytes:
            raise StreamTooLarge(f"an event larger than {self.max_event_bytes} bytes")
        return found

    def finish(self) -> list[Event]:
        """At the end of the stream: the last event, when it came without its blank line (or ended in a CR)."""
        return self.feed(b"\n\n")

    def _line(self, line: bytes) -> Event | None:
        if not line:  # a blank line ends the event
            if not self._data and not self._name:
                return None
            event = Event(self._name or "message", b"\n".join(self._data))
            self._data, self._name, self._held = [], "", 0
            self.events += 1
            if self.events > self.max_events:
                raise StreamTooLarge(f"more than {self.max_events} events")
            return event
        if line.startswith(b":"):
            return None  # a comment (keep-alive)
        field, _, value = line.partition(b":")
        value = value.removeprefix(b" ")
        if field == b"data":
            self._held += len(value) + 1
            if self._held > self.max_event_bytes:
                raise StreamTooLarge(f"an event larger than {self.max_event_bytes} bytes")
            self._data.append(value)
        elif field == b"event":
            self._name = value.decode("utf-8", "replace")[:200]
        return None  # id, retry and unknown fields are ignored


def _line_end(buffer: bytearray, search: int) -> tuple[int, int] | None:
    """Where the line being read ends and the next begins (CRLF, LF or CR), or None when it has not ended;
    the search begins at ``search`` (the line's bytes before it are known to hold no line end)."""
    newline = buffer.find(b"\n", search)
    carriage = buffer.find(b"\r", search, newline if newline != -1 else len(buffer))
    if carriage != -1:
        if carriage + 1 == len(buffer):
            return None  # a CR at the end: the LF may follow in the next chunk
        return carriage, carriage + (2 if buffer[carriage + 1] == 0x0A else 1)
    if newline == -1:
        return None
    return newline, newline + 1


def _failure(exc: aiohttp.ClientError | TimeoutError) -> UpstreamFailure:
    """aiohttp's exceptions as the shared client reports them: not reached (no connection), timed out, or cut."""
    reason = type(exc).__name__
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamFailure(reason, reached=False, timed_out=False)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamFailure(reason, reached=False, timed_out=True)
    return UpstreamFailure(reason, reached=True, timed_out=isinstance(exc, TimeoutError))


class EventStreamClient:
    """One aiohttp session for streamed answers, made on first use inside the running loop."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._env_proxies = urllib.request.getproxies_environment()

    def _proxy(self, url: str) -> str | None:
        if not self._env_proxies:
            return None
        parts = urlsplit(url)
        if urllib.request.proxy_bypass_environment(parts.hostname or "", self._env_proxies):  # type: ignore[attr-defined]
            return None
        return self._env_proxies.get(parts.scheme)

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        connect_timeout: float,
        read_timeout: float,
        max_bytes: int,
        parser: EventParser,
        on_event: Callable[[Event], bool],
    ) -> Answer | None:
        """Post ``body``; each event of a streamed answer goes to ``on_event`` (True: enough, stop reading).

        Returns None for a stream, or the whole ``Answer`` when the server did not answer one. Raises
        ``UpstreamFailure``, ``AnswerTooLarge`` (``max_bytes`` in all), ``StreamTooLarge``, and what
        ``on_event`` raises.
        """
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64), cookie_jar=aiohttp.DummyCookieJar()
            )
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout)
        try:
            async with self._session.post(
                url, data=body, headers=headers, timeout=timeout, allow_redirects=False, proxy=self._proxy(url)
            ) as response:
                streamed = response.status == 200 and response.content_type == EVENT_STREAM
                read = 0
                whole = bytearray()
                while True:
                    chunk = await response.content.readany()
                    if not chunk:
                        break
                    read += len(chunk)
                    if read > max_bytes:
                        raise AnswerTooLarge(max_bytes)
                    if not streamed:
                        whole += chunk
                        continue
                    for event in parser.feed(chunk):
                        if on_event(event):
                            return None
                if streamed:
                    for event in parser.finish():
                        if on_event(event):
                            return None
                    return None
                return Answer(response.status, response.headers, whole)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _failure(exc) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
