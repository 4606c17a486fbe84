"""Every failure, rendered in the envelope of the dialect the client spoke.

The pipeline (``gateway.pipeline``) renders with the error table of the route's dialect;
Litestar's routes (health, images, docs, unknown paths) go through ``handle_exception``,
answered in the dialect their path belongs to, else in the OpenAI envelope. A client never
sees a stack trace: anything unexpected is logged here and answered as ``internal``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, NotFoundException
from litestar.status_codes import HTTP_405_METHOD_NOT_ALLOWED, HTTP_413_REQUEST_ENTITY_TOO_LARGE

from gateway.inbound import body_too_large
from gateway.routes import errors_for_path
from schemas.canonical import ErrorCode, GatewayError
from schemas.dialect import ErrorTable
from schemas.disconnect import CLIENT_CLOSED_REQUEST, ClientGone

__all__ = ["ErrorAnswer", "handle_exception", "render", "to_gateway_error"]

log = structlog.get_logger("gateway.errors")


def to_gateway_error(exc: Exception, max_body_bytes: int) -> GatewayError:
    """Any exception → the canonical error a client should see."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, HTTPException):
        if exc.status_code == HTTP_413_REQUEST_ENTITY_TOO_LARGE:
            return body_too_large(max_body_bytes)
        if isinstance(exc, NotFoundException):
            return GatewayError(ErrorCode.INVALID_REQUEST, "no such route", status=404)
        if exc.status_code == HTTP_405_METHOD_NOT_ALLOWED:
            return GatewayError(ErrorCode.INVALID_REQUEST, "method not allowed on this route", status=405)
        if exc.status_code < 500:
            return GatewayError(ErrorCode.INVALID_REQUEST, str(exc.detail), status=exc.status_code)
    log.error("unhandled_exception", exc_info=exc)
    return GatewayError(ErrorCode.INTERNAL, "internal error")


class ErrorAnswer(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes


def render(exc: Exception, table: ErrorTable, max_body_bytes: int) -> ErrorAnswer:
    """Any exception → its status, headers and body in the dialect of ``table``."""
    error = to_gateway_error(exc, max_body_bytes)
    headers = dict(error.headers)
    if error.retry_after is not None and "Retry-After" not in headers:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    if error.provider:
        headers["X-Gateway-Provider"] = error.provider
    return ErrorAnswer(error.status, headers, table.render(error))


def handle_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Litestar exception handler for every exception type."""
    if isinstance(exc, ClientGone):  # nobody is there to read an answer
        return Response(b"", status_code=CLIENT_CLOSED_REQUEST)
    max_body = request.app.state.gateway.config.server.max_body_bytes if "gateway" in request.app.state else 0
    status, headers, body = render(exc, errors_for_path(request.url.path), max_body)
    return Response(body, status_code=status, media_type="application/json", headers=headers)
