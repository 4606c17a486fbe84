"""The translation table of adapters/http.py: whatever an upstream answers becomes one canonical error.

The adapter is the real one of each provider kind, built from a parsed config; below it is a transport
that answers what each test scripts (``UpstreamClient``'s two methods), so that every row of the table
is reached without a network: each dialect's error envelope for every canonical code (the codes of
docs/errors.md), a 401 or 403 that refuses the gateway's key, an upstream's internal error, a body
that is not JSON, a connection that is refused or times out, an answer over the size cap, and an
operation the provider does not do.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

from adapters import build_adapter
from adapters.base import CallOptions
from adapters.http import HttpAdapter, UpstreamUnreachable
from adapters.upstream import Answer, AnswerTooLarge, UpstreamFailure
from gateway.config import parse_config
from schemas.canonical import ErrorCode, FailureReason, GatewayError, ImageRequest, Operation

SECRET = "sk-upstream-secret-0123456789"
ERRORS_DOC = Path(__file__).resolve().parents[2] / "docs" / "errors.md"
# Provider kind → its column in docs/errors.md's table (the wire code its error answers carry).
COLUMN = {"melious": 3, "nebul": 4, "pomelo": 5, "nebulablock": 5}
KINDS = {
    "melious": {},
    "nebul": {},
    "pomelo": {"endpoint": "midjourney"},
    "nebulablock": {"api": "v1"},
}


class ScriptedTransport:
    """An ``UpstreamClient`` that answers each send with the next scripted answer, or raises it."""

    def __init__(self, *outcomes: Answer | Exception) -> None:
        self.outcomes = list(outcomes)
        self.sent: list[tuple[str, str, Mapping[str, str] | None]] = []

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
        self.sent.append((method, url, headers))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def aclose(self) -> None:
        return None


def adapter(kind: str, transport: ScriptedTransport) -> HttpAdapter:
    entry = {"kind": kind, "base_url": "http://upstream.test", "api_key": SECRET, **KINDS[kind]}
    raw = {"providers": {"p": entry}, "models": [{"name": "m", "targets": [{"provider": "p", "model": "x"}]}]}
    config = parse_config(yaml.safe_dump(raw), "<unit test>")
    built = build_adapter(kind, "p", config.providers["p"], transport)
    assert isinstance(built, HttpAdapter)
    return built


def request(operation: Operation = Operation.GENERATE) -> ImageRequest:
    return ImageRequest(model="x", prompt="a lighthouse", width=512, height=512, operation=operation)


async def failure(kind: str, *outcomes: Answer | Exception, operation: Operation = Operation.GENERATE) -> GatewayError:
    with pytest.raises(GatewayError) as raised:
        await adapter(kind, ScriptedTransport(*outcomes)).generate(request(operation), CallOptions())
    error = raised.value
    assert SECRET not in str(error) and SECRET not in error.message
    return error


def json_answer(status: int, body: bytes, **headers: str) -> Answer:
    return Answer(status, {"content-type": "application/json", **headers}, bytearray(body))


def documented_rows() -> list[tuple[ErrorCode, int, tuple[str, ...]]]:
    """docs/errors.md's table: each canonical code, its status, and each dialect's wire code."""
    rows = []
    for line in ERRORS_DOC.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 6 and re.fullmatch(r"`[a-z_]+`", cells[0]) and cells[1].isdigit():
            rows.append((ErrorCode(cells[0].strip("`")), int(cells[1]), tuple(cells)))
    assert len(rows) == len(ErrorCode), "docs/errors.md's table names every canonical code once"
    return rows


def expected(kind: str, code: ErrorCode) -> ErrorCode:
    """What the adapter makes of the answer a provider of ``kind`` gives for ``code``.

    A wire code that several canonical codes share (Melious says ``VALIDATION_INVALID_VALUE`` for an
    invalid request, prompt and size alike) reads back as the first of them; the provider's refusal of
    the gateway's key and its internal error are the upstream's failure, never the client's.
    """
    rows = documented_rows()
    wire = next(cells[COLUMN[kind]] for row_code, _, cells in rows if row_code is code)
    read = next(row_code for row_code, _, cells in rows if cells[COLUMN[kind]] == wire)
    return ErrorCode.UPSTREAM_ERROR if read in (ErrorCode.UNAUTHORIZED, ErrorCode.INTERNAL) else read


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda code: code.value)
@pytest.mark.parametrize("kind", list(KINDS))
async def test_each_dialects_error_answer_reads_as_the_documented_canonical_code(kind: str, code: ErrorCode) -> None:
    table = adapter(kind, ScriptedTransport()).errors
    said = GatewayError(code, "the upstream says no")
    error = await failure(kind, json_answer(said.status, table.render(said)))
    assert error.code is expected(kind, code), (kind, code, error.code, error.message)
    assert error.provider == "p"
    if code is ErrorCode.UNAUTHORIZED:
        assert error.reason is FailureReason.UPSTREAM_CREDENTIALS and error.status == 502
    if code is ErrorCode.INTERNAL:
        assert error.status == 502 and "provider p failed internally" in error.message


@pytest.mark.parametrize("kind", list(KINDS))
async def test_a_401_whatever_its_body_is_the_gateways_key_refused(kind: str) -> None:
    error = await failure(kind, json_answer(401, b'{"detail": "bad key ' + SECRET.encode() + b'"}'))
    assert error.code is ErrorCode.UPSTREAM_ERROR and error.status == 502
    assert error.reason is FailureReason.UPSTREAM_CREDENTIALS
    assert "refusing the gateway's credentials" in error.message


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, ErrorCode.INVALID_REQUEST), (403, ErrorCode.UPSTREAM_ERROR), (404, ErrorCode.MODEL_NOT_FOUND),
     (429, ErrorCode.RATE_LIMITED), (500, ErrorCode.UPSTREAM_ERROR), (502, ErrorCode.UPSTREAM_ERROR),
     (503, ErrorCode.OVERLOADED), (504, ErrorCode.UPSTREAM_TIMEOUT)],
)  # fmt: skip
async def test_an_error_body_it_cannot_read_falls_back_on_the_status(status: int, code: ErrorCode) -> None:
    error = await failure("nebul", Answer(status, {"content-type": "text/html"}, bytearray(b"<h1>oops</h1>")))
    assert error.code is code, error.message
    if status == 403:  # a 403 that names no other code refuses the gateway's key
        assert error.reason is FailureReason.UPSTREAM_CREDENTIALS


async def test_retry_after_is_read_from_the_header() -> None:
    said = GatewayError(ErrorCode.RATE_LIMITED, "slow down")
    table = adapter("nebul", ScriptedTransport()).errors
    error = await failure("nebul", json_answer(429, table.render(said), **{"retry-after": "7"}))
    assert error.code is ErrorCode.RATE_LIMITED and error.retry_after == 7.0


async def test_a_success_that_is_not_json_is_an_upstream_error() -> None:
    error = await failure("melious", Answer(200, {"content-type": "text/html"}, bytearray(b"<html>")))
    assert error.code is ErrorCode.UPSTREAM_ERROR
    assert error.message == "provider p answered text/html instead of JSON"
    error = await failure("melious", Answer(200, {}, bytearray(b"{}")))
    assert error.message == "provider p answered no content type instead of JSON"


async def test_a_json_success_of_the_wrong_shape_is_an_upstream_error() -> None:
    error = await failure("melious", json_answer(200, b'{"data": "not a list"}'))
    assert error.code is ErrorCode.UPSTREAM_ERROR and error.provider == "p"


@pytest.mark.parametrize(
    ("raised", "code", "unreachable", "message"),
    [
        (UpstreamFailure("ClientConnectorError", reached=False, timed_out=False), ErrorCode.UPSTREAM_ERROR, True,
         "provider p could not be reached (ClientConnectorError)"),
        (UpstreamFailure("ConnectionTimeoutError", reached=False, timed_out=True), ErrorCode.UPSTREAM_TIMEOUT, False,
         "provider p call timed out"),
        (UpstreamFailure("SocketTimeoutError", reached=True, timed_out=True), ErrorCode.UPSTREAM_TIMEOUT, False,
         "provider p call timed out"),
        (UpstreamFailure("ServerDisconnectedError", reached=True, timed_out=False), ErrorCode.UPSTREAM_ERROR, False,
         "provider p call failed: ServerDisconnectedError"),
        (AnswerTooLarge(1000), ErrorCode.UPSTREAM_ERROR, False, "provider p answered more than 1000 bytes"),
    ],
    ids=["refused", "connect-timeout", "read-timeout", "cut-off", "too-large"],
)  # fmt: skip
async def test_transport_failures(raised: Exception, code: ErrorCode, unreachable: bool, message: str) -> None:
    error = await failure("nebul", raised)
    assert error.code is code and error.message == message and error.provider == "p"
    assert isinstance(error, UpstreamUnreachable) is unreachable  # only a request that never left may go elsewhere


async def test_an_operation_the_provider_does_not_do_is_refused_without_a_call() -> None:
    transport = ScriptedTransport()
    with pytest.raises(GatewayError) as raised:
        await adapter("melious", transport).generate(request(Operation.VARIATION), CallOptions())
    assert raised.value.code is ErrorCode.OPERATION_NOT_SUPPORTED
    assert raised.value.message == "provider p cannot do variation"
    assert transport.sent == []


async def test_the_request_carries_the_key_the_request_id_and_the_trace() -> None:
    transport = ScriptedTransport(json_answer(500, b"{}"))
    options = CallOptions(request_id="req-1", traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01")
    with pytest.raises(GatewayError):
        await adapter("nebul", transport).generate(request(), options)
    method, url, headers = transport.sent[0]
    assert (method, url) == ("POST", "http://upstream.test/v1/images/generations")
    assert headers is not None
    assert headers["Authorization"] == f"Bearer {SECRET}"
    assert headers["X-Request-ID"] == "req-1" and headers["traceparent"] == options.traceparent
