"""Server-sent events read as they arrive, bounded (adapters/eventstream.py)."""

from __future__ import annotations

import pytest

from adapters.eventstream import Event, EventParser, StreamTooLarge

STREAM = (
    b": keep-alive\n\n"
    b'event: image_generation.partial_image\ndata: {"a":\ndata: 1}\n\n'
    b"id: 7\r\nevent: image_generation.completed\r\ndata: {}\r\n\r\n"
    b"data: bare\r\r"
)
EVENTS = [
    Event("image_generation.partial_image", b'{"a":\n1}'),
    Event("image_generation.completed", b"{}"),
    Event("message", b"bare"),
]


def test_events_whole_at_once() -> None:
    parser = EventParser(1 << 20, 10)
    assert parser.feed(STREAM) == EVENTS[:2]  # the last one ends in a CR: an LF may follow
    assert parser.finish() == EVENTS[2:]


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_events_cut_anywhere_into_chunks(size: int) -> None:
    parser = EventParser(1 << 20, 10)
    found = [event for start in range(0, len(STREAM), size) for event in parser.feed(STREAM[start : start + size])]
    assert found + parser.finish() == EVENTS


def test_an_event_larger_than_the_bound_is_refused_even_before_its_line_ends() -> None:
    parser = EventParser(100, 10)
    assert parser.feed(b"data: " + b"x" * 90 + b"\n\n") == [Event("message", b"x" * 90)]
    with pytest.raises(StreamTooLarge):
        parser.feed(b"data: " + b"x" * 101)  # no line end yet: still bounded
    with pytest.raises(StreamTooLarge):
        EventParser(100, 10).feed(b"data: " + b"x" * 60 + b"\ndata: " + b"x" * 60 + b"\n")


def test_more_events_than_the_bound_are_refused() -> None:
    parser = EventParser(1 << 20, 2)
    assert len(parser.feed(b"data: 1\n\ndata: 2\n\n")) == 2
    with pytest.raises(StreamTooLarge):
        parser.feed(b"data: 3\n\n")


def test_comments_are_not_events() -> None:
    parser = EventParser(1 << 20, 1)
    assert parser.feed(b": ping\n\n" * 50) == []


def test_a_long_line_is_searched_once_for_its_end() -> None:
    """A partial image arrives as one long ``data:`` line over many chunks: each chunk is searched, not the line."""
    parser = EventParser(1 << 24, 10)
    chunk = b"A" * 65536
    assert parser.feed(b"data: ") == []
    for _ in range(64):
        assert parser.feed(chunk) == []
        assert parser._scanned == len(parser._buffer)  # everything held has been searched
    assert parser.feed(b"\r") == [] and parser._scanned == len(parser._buffer) - 1  # a CR may start a CRLF
    assert parser.feed(b"\n\n") == [Event("message", chunk * 64)]
