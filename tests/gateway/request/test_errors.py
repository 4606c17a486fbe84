"""Any exception, rendered in each dialect's envelope: the status, the headers, never internals."""

from __future__ import annotations

import json

import pytest

from gateway.request.errors import render
from schemas import melious, nebulablock, openai, pomelo
from schemas.canonical import ErrorCode, GatewayError
from schemas.dialect import ErrorTable

TABLES: dict[str, ErrorTable] = {
    "melious": melious.ERRORS,
    "openai": openai.ERRORS,
    "pomelo": pomelo.ERRORS,
    "nebulablock": nebulablock.ERRORS,
}


@pytest.mark.parametrize("dialect", sorted(TABLES))
def test_an_unexpected_exception_is_internal_and_says_nothing_of_itself(dialect: str) -> None:
    status, _, body = render(KeyError("api_key=sk-secret"), TABLES[dialect], 1024)
    assert status == 500 and "sk-secret" not in body.decode() and "KeyError" not in body.decode()
    assert json.loads(body)["error"]["message"]


@pytest.mark.parametrize("dialect", sorted(TABLES))
def test_a_retry_after_becomes_whole_seconds_in_the_header(dialect: str) -> None:
    error = GatewayError(ErrorCode.RATE_LIMITED, "slow down", retry_after=0.2)
    status, headers, _ = render(error, TABLES[dialect], 1024)
    assert status == 429 and headers["Retry-After"] == "1"


def test_headers_the_error_carries_are_kept() -> None:
    error = GatewayError(ErrorCode.UNAUTHORIZED, "no key", headers={"WWW-Authenticate": "Bearer"})
    status, headers, body = render(error, TABLES["openai"], 1024)
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
    assert json.loads(body)["error"]["message"] == "no key"


def test_one_translation_serves_the_gateway_and_the_worker_server() -> None:
    from litestar.exceptions import MethodNotAllowedException, NotFoundException, ValidationException

    from schemas.canonical import as_gateway_error

    assert as_gateway_error(KeyError("x")) is None  # unexpected: the server logs it and answers internal
    own = GatewayError(ErrorCode.OVERLOADED, "busy")
    assert as_gateway_error(own) is own
    missing = as_gateway_error(NotFoundException())
    assert missing is not None and (missing.status, missing.message) == (404, "no such route")
    wrong = as_gateway_error(MethodNotAllowedException())
    assert wrong is not None and wrong.status == 405 and wrong.code is ErrorCode.INVALID_REQUEST
    refused = as_gateway_error(ValidationException(detail="bad field"))
    assert refused is not None and (refused.status, refused.message) == (400, "bad field")
