"""Every failure, rendered in the envelope of the dialect the client spoke.

The pipeline (``gateway.pipeline``) renders with the error table of the route's dialect;
Litestar's routes (health, images, docs, unknown paths) go through ``handle_exception``,
answered in the dialect their path belongs to, else in the OpenAI envelope. A client never
sees a stack trace: anything unexpected is logged here and answered as ``internal``.
"""

from __future__ import annotations

from typing import Any

import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException
from litestar.status_codes import HTTP_413_REQUEST_ENTITY_TOO_LARGE

from gateway.request.inbound import body_too_large
from gateway.request.mounts import errors_for_path
from schemas.canonical import ErrorCode, GatewayError, as_gateway_error
from schemas.dialect import ErrorAnswer, ErrorTable, error_answer
from schemas.disconnect import CLIENT_CLOSED_REQUEST, ClientGone

__all__ = ["ErrorAnswer", "handle_exception", "render", "to_gateway_error"]

log = structlog.get_logger("gateway.errors")


def to_gateway_error(exc: Exception, max_body_bytes: int) -> GatewayError:
    """Any exception → the canonical error a client should see (``as_gateway_error``, which the worker
    server uses too, with the gateway's own wording of a body over its limit)."""
    if isinstance(exc, HTTPException) and exc.status_code == HTTP_413_REQUEST_ENTITY_TOO_LARGE:
        return body_too_large(max_body_bytes)
    error = as_gateway_error(exc)
    if error is None:
        log.error("unhandled_exception", exc_info=exc)
        return GatewayError(ErrorCode.INTERNAL, "internal error")
    return error


def render(exc: Exception, table: ErrorTable, max_body_bytes: int) -> ErrorAnswer:
    """Any exception → its status, headers and body in the dialect of ``table``."""
    return error_answer(to_gateway_error(exc, max_body_bytes), table)


def handle_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Litestar exception handler for every exception type."""
    if isinstance(exc, ClientGone):  # nobody is there to read an answer
        return Response(b"", status_code=CLIENT_CLOSED_REQUEST)
    max_body = request.app.state.gateway.config.server.max_body_bytes if "gateway" in request.app.state else 0
    status, headers, body = render(exc, errors_for_path(request.url.path), max_body)
    return Response(body, status_code=status, media_type="application/json", headers=headers)
