"""The one request pipeline: every dialect route, JSON and multipart, served from its ASGI scope.

Litestar routes a dialect request like any other: ``dialect_handlers`` mounts one ASGI route
handler at each path of the dialect table (``gateway.request.mounts``), and the handler hands
the raw scope here, so the body is read by the bounded reader of ``gateway.request.inbound``,
not by Litestar. (``IMAGE_GATEWAY_DISPATCH=direct`` puts back the dispatch that ran before
Litestar, for ``make bench`` to compare the two; docs/benchmarks.md.)

Per request, in one place: the request id (taken from ``X-Request-ID`` or made, bound to
every log line, echoed back), the method check (a 405 with ``Allow``), the body limits
(``gateway.request.inbound``), the 499 for a client that hung up, and the rendering of any
failure in the client's own envelope. The steps in between are ``gateway.request.serve``.
"""

from __future__ import annotations

from typing import Any

import structlog
from litestar import asgi
from litestar.handlers import ASGIRouteHandler
from litestar.types import HTTPResponseStartEvent, Receive, Scope, Send

from gateway.observability.logs import (
    OWN_REQUEST_ID,
    REQUEST_ID_HEADER,
    bind_inbound_keys,
    request_id,
    unbind_inbound_keys,
)
from gateway.request.errors import render
from gateway.request.inbound import BodyPace, ScopeInbound
from gateway.request.mounts import DIALECT_ROUTES, DialectRoute, Mount, find_route
from gateway.request.serve import JSON, serve_recorded
from gateway.request.streams import StreamedAnswer
from gateway.state import Gateway
from schemas.canonical import ErrorCode, GatewayError
from schemas.disconnect import CLIENT_CLOSED_REQUEST, ClientGone
from schemas.imageforms import Pieces

__all__ = ["dialect_handlers", "dialect_route_for", "serve_dialect_route"]

_CONTENT_TYPE_JSON = (b"content-type", JSON.encode())


def _method_not_allowed(route: DialectRoute) -> GatewayError:
    error = GatewayError(ErrorCode.INVALID_REQUEST, "method not allowed on this route", status=405)
    error.headers["Allow"] = route.allow
    return error


async def serve_dialect_route(
    gateway: Gateway, route: DialectRoute, scope: Scope, receive: Receive, send: Send
) -> None:
    """Serve one dialect request: the answer, or any failure in the dialect's envelope."""
    given_id = request_id(scope)
    tokens = structlog.contextvars.bind_contextvars(request_id=given_id)
    keys = bind_inbound_keys(scope["headers"])  # no line of this request carries the key it presents
    server = gateway.config.server
    pace = BodyPace(server.body_idle_timeout_s, server.body_min_bytes_per_s)
    inbound = ScopeInbound(scope, receive, server.max_body_bytes, gateway.admission.body_budget, pace)
    mount = route.by_method.get(scope["method"])  # type: ignore[typeddict-item]
    try:
        answered = await _answer(gateway, route, mount, inbound)
        if isinstance(answered, StreamedAnswer):  # its body was read: the events go out as they come
            assert mount is not None
            await answered.send(send, [(REQUEST_ID_HEADER, given_id.encode())], mount.errors)
            return
        status, headers, body = answered
        if not inbound.finished:  # refused before its body was read: read it so the client sees the answer
            await inbound.drain()
            if not inbound.finished:
                headers = {**headers, "Connection": "close"}
    except ClientGone:
        status, headers, body = CLIENT_CLOSED_REQUEST, {}, b""  # nobody is there to read it
    finally:
        inbound.release()
        unbind_inbound_keys(keys)
        structlog.contextvars.reset_contextvars(**tokens)
    await _send(send, status, headers, body, given_id)


async def _answer(
    gateway: Gateway, route: DialectRoute, mount: Mount | None, inbound: ScopeInbound
) -> tuple[int, dict[str, str], bytes | Pieces] | StreamedAnswer:
    errors = (mount or route.mount).errors
    try:
        if mount is None:
            raise _method_not_allowed(route)
        answer = await serve_recorded(gateway, mount.endpoint, inbound)
        if isinstance(answer, StreamedAnswer):
            return answer
        return answer.status, answer.headers, answer.body
    except ClientGone:
        raise
    except Exception as exc:  # every failure is answered in the client's dialect, never as a traceback
        return render(exc, errors, gateway.config.server.max_body_bytes)


async def _send(send: Send, status: int, headers: dict[str, str], body: bytes | Pieces, given_id: str) -> None:
    raw_headers: list[tuple[bytes, bytes]] = [
        _CONTENT_TYPE_JSON,
        (b"content-length", str(len(body)).encode()),
        *((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()),
        (REQUEST_ID_HEADER, given_id.encode()),
    ]
    start: HTTPResponseStartEvent = {"type": "http.response.start", "status": status, "headers": raw_headers}
    await send(start)
    if isinstance(body, Pieces):  # a heavy answer: each chunk copied once, as the server takes it
        chunks = body.chunks()
        last = len(chunks) - 1
        for n, chunk in enumerate(chunks):
            await send({"type": "http.response.body", "body": bytes(chunk), "more_body": n < last})
        return
    await send({"type": "http.response.body", "body": body, "more_body": False})


def dialect_route_for(scope: Any) -> DialectRoute | None:
    """The dialect route an ASGI scope asks for, if it is an HTTP request to one."""
    return find_route(scope["path"]) if scope["type"] == "http" else None


def dialect_handlers() -> list[ASGIRouteHandler]:
    """One Litestar ASGI route handler per dialect path: Litestar routes (a trailing slash is the same path,
    as for every route), the handler serves every method (a wrong one is the dialect's 405 with ``Allow``)."""
    return [_dialect_handler(path, route) for path, route in DIALECT_ROUTES.items()]


def _dialect_handler(path: str, route: DialectRoute) -> ASGIRouteHandler:
    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        await serve_dialect_route(scope["app"].state.gateway, route, scope, receive, send)

    return asgi(path, name=f"dialect:{path}", copy_scope=False, opt={OWN_REQUEST_ID: True})(serve)
