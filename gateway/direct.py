"""The direct path: a JSON dialect request served from the ASGI scope, before Litestar routes it.

Every image request pays for what sits on its path. Litestar's routing, request and
response objects cost about a tenth of the gateway's CPU per request on the benchmark
(docs/benchmarks.md); this path serves the JSON dialect endpoints (``POST``, exact path)
with the same ``serve`` the route handlers use, and hands everything else to Litestar:
multipart edits and variations, other methods, unknown paths, health, metrics, docs.
What a client sees is the same on both paths (tests/integration/test_direct.py holds them
side by side): the answer, its headers, the request id, errors in the dialect's envelope.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog
from litestar.types import HTTPResponseStartEvent, Receive, Scope, Send

from gateway.errors import render
from gateway.logs import REQUEST_ID_HEADER, request_id
from gateway.routes import JSON, MOUNTS, Mount, body_too_large, serve_recorded
from gateway.state import Gateway
from local_backend.disconnect import CLIENT_CLOSED_REQUEST, ClientGone
from schemas.dialect import BodyKind

__all__ = ["DIRECT_ROUTES", "ScopeInbound", "serve_direct"]

# Path → mount, for the JSON endpoints taken by POST.
DIRECT_ROUTES: Mapping[str, Mount] = {
    mount.prefix + mount.endpoint.path: mount
    for mount in MOUNTS
    if mount.endpoint.body_kind is BodyKind.JSON and "POST" in mount.methods
}
_CONTENT_TYPE_JSON = (b"content-type", JSON.encode())


class ScopeInbound:
    """A dialect request read straight from its ASGI scope and messages."""

    __slots__ = ("_headers", "max_body_bytes", "receive", "scope")

    def __init__(self, scope: Scope, receive: Receive, max_body_bytes: int) -> None:
        self.scope = scope
        self.receive = receive
        self.max_body_bytes = max_body_bytes
        self._headers: dict[str, str] | None = None

    @property
    def headers(self) -> Mapping[str, str]:
        if self._headers is None:  # ASGI gives names in lower case; a repeated header keeps its first value
            self._headers = {}
            for name, value in self.scope["headers"]:
                self._headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
        return self._headers

    async def body(self) -> bytes:
        """The whole body, refused with 413 once it is, or says it is, larger than the limit."""
        limit = self.max_body_bytes
        declared = self.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise body_too_large(limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk: bytes = message.get("body", b"")  # type: ignore[assignment]
            size += len(chunk)
            if size > limit:
                raise body_too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def form(self) -> dict[str, Any]:
        raise AssertionError("multipart endpoints are left to Litestar")

    def base_url(self) -> str:
        scope = self.scope
        host = self.headers.get("host")
        if host is None:
            server = scope.get("server")
            host = f"{server[0]}:{server[1]}" if server else "localhost"
        return f"{scope.get('scheme', 'http')}://{host}{scope.get('root_path', '')}".rstrip("/")


async def serve_direct(gateway: Gateway, mount: Mount, scope: Scope, receive: Receive, send: Send) -> None:
    """Serve one JSON dialect request: the answer, or any failure in the dialect's envelope."""
    given_id = request_id(scope)
    tokens = structlog.contextvars.bind_contextvars(request_id=given_id)
    try:
        max_body = gateway.config.server.max_body_bytes
        inbound = ScopeInbound(scope, receive, max_body)
        try:
            body, headers = await serve_recorded(gateway, mount.endpoint, inbound)
            status = 200
        except ClientGone:
            status, headers, body = CLIENT_CLOSED_REQUEST, {}, b""  # nobody is there to read it
        except Exception as exc:  # every failure is answered in the client's dialect, never as a traceback
            status, headers, body = render(exc, mount.errors, max_body)
        raw_headers = [
            _CONTENT_TYPE_JSON,
            (b"content-length", str(len(body)).encode()),
            *((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()),
            (REQUEST_ID_HEADER, given_id.encode()),
        ]
        start: HTTPResponseStartEvent = {"type": "http.response.start", "status": status, "headers": raw_headers}
        await send(start)
        await send({"type": "http.response.body", "body": body, "more_body": False})
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
