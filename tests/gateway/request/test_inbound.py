"""gateway/request/inbound.py: what the pipeline reads of a client's request, and the limits on it.

``ScopeInbound`` is driven the way a server drives it: an ASGI scope, and a ``receive`` that hands
over the body's messages (here, the ones each test lists), with the real in-flight ``BodyBudget``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import pytest

from gateway.admission.gate import BodyBudget
from gateway.request.inbound import DRAIN_FACTOR, BodyPace, ScopeInbound, parse_form
from schemas.canonical import ErrorCode, GatewayError
from schemas.disconnect import ClientGone

LIMIT = 1000
DEFAULT_PACE = BodyPace()


class Receive:
    """The body's messages, in order; ``gap_s`` before each (a slow client); after them, nothing comes."""

    def __init__(self, chunks: Iterable[bytes | None], gap_s: float = 0.0) -> None:
        self.messages: list[dict[str, Any]] = []
        chunks = list(chunks)
        for n, chunk in enumerate(chunks):
            if chunk is None:  # the client hung up
                self.messages.append({"type": "http.disconnect"})
            else:
                self.messages.append({"type": "http.request", "body": chunk, "more_body": n < len(chunks) - 1})
        self.gap_s = gap_s
        self.asked = 0

    async def __call__(self) -> dict[str, Any]:
        self.asked += 1
        if self.gap_s:
            await asyncio.sleep(self.gap_s)
        if not self.messages:
            await asyncio.sleep(3600)  # a client that sends nothing more
        return self.messages.pop(0)


def scope(headers: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    raw = [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    return {"type": "http", "method": "POST", "path": "/v1/images/generations", "headers": raw, **extra}


def inbound(
    receive: Receive,
    headers: dict[str, str] | None = None,
    budget: BodyBudget | None = None,
    pace: BodyPace = DEFAULT_PACE,
    **extra: Any,
) -> ScopeInbound:
    client = extra.pop("client", ("10.0.0.7", 5000))
    return ScopeInbound(scope(headers, client=client, **extra), receive, LIMIT, budget or BodyBudget(10 * LIMIT), pace)


async def refused(request: ScopeInbound) -> GatewayError:
    with pytest.raises(GatewayError) as raised:
        await request.body()
    return raised.value


async def test_a_body_in_pieces_is_read_whole_and_its_bytes_are_held_until_release() -> None:
    budget = BodyBudget(10 * LIMIT)
    request = inbound(Receive([b"ab", b"cd", b""]), budget=budget)
    assert await request.body() == b"abcd"
    assert request.finished and request.received == 4
    assert budget.used == 4 and budget.by_holder == {"address:10.0.0.7": 4}
    request.release()
    assert budget.used == 0 and request.reserved == 0


async def test_a_declared_length_is_reserved_before_a_byte_is_read() -> None:
    budget = BodyBudget(10 * LIMIT)
    receive = Receive([b"x" * 10])
    request = inbound(receive, {"Content-Length": "10"}, budget=budget)
    assert await request.body() == b"x" * 10
    assert budget.used == 10


async def test_a_declared_length_over_the_limit_is_a_413_before_reading() -> None:
    receive = Receive([b"x"])
    error = await refused(inbound(receive, {"Content-Length": str(LIMIT + 1)}))
    assert (error.code, error.status) == (ErrorCode.INVALID_REQUEST, 413)
    assert error.message == f"request body is larger than {LIMIT} bytes"
    assert receive.asked == 0


async def test_a_chunked_body_that_grows_past_the_limit_is_a_413() -> None:
    error = await refused(inbound(Receive([b"x" * 600, b"x" * 600, b""])))
    assert error.status == 413


async def test_a_body_longer_than_it_declared_is_refused() -> None:
    error = await refused(inbound(Receive([b"x" * 20]), {"Content-Length": "10"}))
    assert error.code is ErrorCode.INVALID_REQUEST and error.message == "request body is longer than its Content-Length"


async def test_bodies_past_the_in_flight_budget_are_overloaded_and_past_a_share_rate_limited() -> None:
    budget = BodyBudget(LIMIT, share=0.5, max_body=100)
    first = inbound(Receive([b"x" * 400]), {"Content-Length": "400"}, budget=budget)
    await first.body()
    mine = await refused(inbound(Receive([b"x" * 200]), {"Content-Length": "200"}, budget=budget))
    assert (mine.code, mine.retry_after) == (ErrorCode.RATE_LIMITED, 1.0)  # the same address: its share is spent
    other = inbound(Receive([b"x" * 500]), {"Content-Length": "500"}, budget=budget, client=("10.0.0.8", 1))
    await other.body()
    full = await refused(inbound(Receive([b"x" * 200]), {"Content-Length": "200"}, budget=budget, client=("c", 1)))
    assert full.code is ErrorCode.OVERLOADED  # the whole budget is held
    first.release()
    other.release()
    assert budget.used == 0


async def test_a_client_that_hangs_up_mid_body_is_gone() -> None:
    with pytest.raises(ClientGone):
        await inbound(Receive([b"ab", None])).body()


async def test_a_body_that_stops_coming_is_a_408_and_is_not_drained() -> None:
    receive = Receive([b"ab", b"more"])
    receive.messages.pop()  # "ab", more to come, then nothing
    request = inbound(receive, pace=BodyPace(idle_s=0.05, min_bytes_per_s=0))
    error = await refused(request)
    assert (error.status, request.stalled) == (408, True)
    assert error.message == "no part of the request body arrived for 0.05 s"
    await asyncio.wait_for(request.drain(), 1)  # returns at once: the connection closes instead


async def test_a_body_slower_than_the_minimum_pace_is_a_408() -> None:
    chunks = [b"x"] * 20 + [b""]
    request = inbound(Receive(chunks, gap_s=0.01), pace=BodyPace(idle_s=0.05, min_bytes_per_s=1000))
    error = await refused(request)
    assert error.status == 408 and "slower than 1000 bytes/s" in error.message


async def test_an_unread_body_is_drained_up_to_its_bound() -> None:
    request = inbound(Receive([b"x" * LIMIT] * (DRAIN_FACTOR + 3)))
    await request.drain()
    assert not request.finished and request.received == DRAIN_FACTOR * LIMIT  # then the connection closes
    small = inbound(Receive([b"ab", b"cd", b""]))
    await small.drain()
    assert small.finished


async def test_a_client_waiting_for_100_continue_is_not_drained() -> None:
    receive = Receive([b"x" * 10])
    await inbound(receive, {"Expect": "100-continue"}).drain()
    assert receive.asked == 0


def test_headers_are_lower_case_and_a_repeated_one_keeps_its_first_value() -> None:
    request = ScopeInbound(
        {"headers": [(b"x-a", b"1"), (b"x-a", b"2"), (b"content-type", b"image/png")]},
        Receive([]),
        LIMIT,
        BodyBudget(LIMIT),
    )
    assert request.headers == {"x-a": "1", "content-type": "image/png"}
    assert request.holder == "address:?"


def test_the_base_url_is_where_the_client_reached_the_gateway() -> None:
    assert inbound(Receive([]), {"Host": "gw.example:8443"}, scheme="https").base_url() == "https://gw.example:8443"
    assert inbound(Receive([]), server=("127.0.0.1", 9000), root_path="/api/").base_url() == "http://127.0.0.1:9000/api"
    assert inbound(Receive([])).base_url() == "http://localhost"


def multipart(*parts: tuple[str, str | None, bytes], boundary: str = "b0undary") -> bytes:
    body = b""
    for name, filename, data in parts:
        file = f'; filename="{filename}"' if filename else ""
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{file}\r\n\r\n'.encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def test_a_multipart_form_gives_text_fields_file_bytes_and_every_image_in_one_list() -> None:
    body = multipart(
        ("prompt", None, b"un chapeau rouge"),
        ("image", "a.png", b"PNG-A"),
        ("image[]", "b.png", b"PNG-B"),
        ("mask", "m.png", b"MASK"),
    )
    fields = parse_form('multipart/form-data; boundary="b0undary"', body)
    assert fields == {"prompt": "un chapeau rouge", "image": [b"PNG-A", b"PNG-B"], "mask": b"MASK"}


def test_an_urlencoded_form_is_read_too() -> None:
    fields = parse_form("application/x-www-form-urlencoded", b"prompt=a+cat&n=2&image=abc")
    assert fields == {"prompt": "a cat", "n": "2", "image": [b"abc"]}


@pytest.mark.parametrize(
    ("content_type", "body", "status", "message"),
    [
        ("multipart/form-data", b"", 400, "request body is not a valid form: multipart/form-data without a boundary"),
        ("multipart/form-data; boundary=b0undary", b"--b0undary\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx",
         400, "request body is not a valid form: Unexpected end of multipart stream (parser closed)"),
        ("multipart/form-data; boundary=b0undary", multipart(*[("f", None, b"x")] * 65), 400,
         "request body is not a valid form: more than 64 parts"),
        ("multipart/form-data; boundary=b0undary", multipart(("prompt", None, b"\xff\xfe")), 400,
         "form field `prompt` is not valid UTF-8 text"),
        ("application/x-www-form-urlencoded", b"prompt=%FF", 400,
         "request body is not a valid form: it is not valid UTF-8 text"),
        ("application/json", b"{}", 415, "this route takes multipart/form-data, not application/json"),
        ("", b"", 415, "this route takes multipart/form-data, not a body without a Content-Type"),
    ],
    ids=["no-boundary", "cut-off", "too-many-parts", "not-utf8-field", "not-utf8-urlencoded", "json", "no-type"],
)  # fmt: skip
def test_a_body_that_is_not_a_form_is_refused_clearly(
    content_type: str, body: bytes, status: int, message: str
) -> None:
    with pytest.raises(GatewayError) as raised:
        parse_form(content_type, body)
    assert (raised.value.status, raised.value.message) == (status, message)


async def test_form_reads_the_body_with_its_content_type() -> None:
    body = multipart(("prompt", None, b"hat"))
    request = inbound(Receive([body]), {"Content-Type": "multipart/form-data; boundary=b0undary"})
    assert await request.form() == {"prompt": "hat"}
