"""Server-sent events, as the gateway sends them: the frames and the headers of a ``text/event-stream``.

One encoder for every stream the gateway answers: a dialect's ``stream: true`` answer
(``gateway.request.streams``) and a job's events (``GET /v1/jobs/{id}/events``,
``gateway.jobs.service``). A frame is ``id:`` (when given), ``event:`` (when given) and one
``data:`` line per line of its data, ended by a blank line (the WHATWG HTML standard,
"Server-sent events"). A quiet stream sends a comment now and then (``keepalive``), which
clients skip, so that a proxy's idle timeout does not cut it.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["EVENT_STREAM", "HEADERS", "KEEPALIVE", "KEEPALIVE_S", "asgi_headers", "frame"]

EVENT_STREAM = "text/event-stream"
# Seconds without an event after which a stream sends ``KEEPALIVE``.
KEEPALIVE_S = 15.0
KEEPALIVE = b": keep-alive\n\n"
# Besides the content type: never cached, and passed on at once by proxies that buffer answers (nginx).
HEADERS: Mapping[str, str] = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def frame(data: bytes, event: str | None = None, id: int | str | None = None) -> bytes:
    """One event: ``id:`` and ``event:`` when given, ``data:`` for each line of ``data``, then a blank line."""
    head = b""
    if id is not None:
        head += b"id: " + _field(str(id)) + b"\n"
    if event is not None:
        head += b"event: " + _field(event) + b"\n"
    if b"\n" in data or b"\r" in data:  # each line its own ``data:`` field; the client joins them with \n
        lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        return head + b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"
    return head + b"data: " + data + b"\n\n"


def _field(value: str) -> bytes:
    """``id`` and ``event`` are one line each: a line break in one would start another field."""
    if "\n" in value or "\r" in value:
        raise ValueError(f"an event's id or type is one line: {value!r}")
    return value.encode()


def asgi_headers(extra: Mapping[str, str] | None = None) -> list[tuple[bytes, bytes]]:
    """The headers of an event stream as ASGI sends them, ``extra`` after them."""
    both = {"Content-Type": EVENT_STREAM, **HEADERS, **(extra or {})}
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in both.items()]
