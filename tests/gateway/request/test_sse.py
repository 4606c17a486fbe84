"""gateway/request/sse.py: the one encoder of the gateway's server-sent events (streams and job events).

Each frame is read back by the gateway's own WHATWG parser (``adapters.eventstream.EventParser``,
the one that reads upstream streams), so what is sent is what an SSE client reads.
"""

from __future__ import annotations

import msgspec
import pytest

from adapters.eventstream import Event, EventParser
from gateway.request import sse


def parsed(stream: bytes) -> list[Event]:
    parser = EventParser(max_event_bytes=1 << 20, max_events=100)
    return parser.feed(stream) + parser.finish()


def test_a_stream_event_is_its_type_and_one_data_line() -> None:
    data = msgspec.json.encode({"type": "image_generation.completed", "b64_json": "aW1n"})
    framed = sse.frame(data, "image_generation.completed")
    assert framed == b"event: image_generation.completed\ndata: " + data + b"\n\n"
    assert parsed(sse.frame(data, "image_generation.completed")) == [Event("image_generation.completed", data)]


def test_a_job_event_carries_its_number_first() -> None:
    data = msgspec.json.encode({"id": "j", "status": "running", "updated_at": 1})
    assert sse.frame(data, "status", 3) == b"id: 3\nevent: status\ndata: " + data + b"\n\n"
    assert parsed(sse.frame(data, "status", 3)) == [Event("status", data)]


def test_data_without_a_type_is_a_message() -> None:
    assert sse.frame(b"{}") == b"data: {}\n\n"
    assert parsed(sse.frame(b"{}")) == [Event("message", b"{}")]


@pytest.mark.parametrize(
    ("data", "lines"),
    [
        (b"one\ntwo", [b"one", b"two"]),
        (b"one\r\ntwo\rthree", [b"one", b"two", b"three"]),  # every line break the standard knows
        (b"ends\n", [b"ends", b""]),
        (b"", [b""]),
    ],
)
def test_each_line_of_the_data_is_a_data_field_and_the_client_joins_them(data: bytes, lines: list[bytes]) -> None:
    framed = sse.frame(data, "e")
    assert framed == b"event: e\n" + b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"
    assert parsed(framed) == [Event("e", b"\n".join(lines))]


@pytest.mark.parametrize(("event", "id"), [("two\nlines", None), ("e", "1\r2")])
def test_an_id_or_type_with_a_line_break_is_refused(event: str, id: str | None) -> None:
    with pytest.raises(ValueError, match="one line"):
        sse.frame(b"{}", event, id)


def test_frames_follow_one_another_and_the_keepalive_is_skipped() -> None:
    stream = sse.frame(b"1", "status", 1) + sse.KEEPALIVE + sse.frame(b"2", "result", 2)
    assert sse.KEEPALIVE.startswith(b":")  # a comment: clients skip it
    assert parsed(stream) == [Event("status", b"1"), Event("result", b"2")]


def test_the_headers_say_event_stream_never_cached_never_buffered() -> None:
    assert sse.asgi_headers() == [
        (b"content-type", b"text/event-stream"),
        (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"),
    ]
    with_rate = sse.asgi_headers({"RateLimit": "limit=10, remaining=9, reset=60"})
    assert with_rate[-1] == (b"ratelimit", b"limit=10, remaining=9, reset=60")
    assert dict(sse.HEADERS) == {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
