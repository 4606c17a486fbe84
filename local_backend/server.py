"""The local engine as a standalone worker server, so GPU nodes scale apart from gateway replicas.

``image-gateway worker --config FILE`` serves the models of the config's first
``kind: local`` provider on this machine's device. The gateway reaches it through a
``kind: local`` provider whose ``workers`` lists its URL (see ``schemas.worker``).
A client that hangs up while its request waits in the queue has it dropped.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Protocol

import structlog
from litestar import Litestar, Request, Response, get, post

from local_backend.engine import EngineStats, LocalEngine
from schemas import worker as protocol
from schemas.canonical import ErrorCode, GatewayError, as_gateway_error
from schemas.dialect import error_answer
from schemas.disconnect import CLIENT_CLOSED_REQUEST, ClientGone, unless_client_leaves
from schemas.local import LocalBackendSettings

__all__ = ["create_worker_app", "local_settings", "serve_worker"]

log = structlog.get_logger("local_backend.server")
JSON = "application/json"


class GatewayConfigLike(Protocol):
    """What a worker reads of the gateway's config (``gateway.config.GatewayConfig``)."""

    @property
    def providers(self) -> Mapping[str, object]: ...


@post(protocol.GENERATE_PATH, status_code=200)
async def generate(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Draw one canonical request; dropped from the queue if its client hangs up first."""
    engine: LocalEngine = request.app.state.engine
    canonical = protocol.decode_request(await request.body())
    result = await unless_client_leaves(request.receive, engine.generate(canonical))
    return Response(protocol.encode_result(result), media_type=JSON)


@get(protocol.HEALTH_PATH)
async def health(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """200 when every configured model loaded, 503 otherwise; the body says how each model is.

    A worker missing one model's weights is not healthy (``degraded``: its other models
    still serve the requests that reach it), so the orchestrator and the operator see it.
    """
    engine: LocalEngine = request.app.state.engine
    stats = engine.stats()
    status = "ok" if engine.healthy else "degraded" if engine.ready else "unavailable"
    body = {"status": status, "device": stats.device, "models": stats.models}
    return Response(body, status_code=200 if engine.healthy else 503)


@get(protocol.STATS_PATH, sync_to_thread=False)
def stats(request: Request[Any, Any, Any]) -> EngineStats:
    """Queue depth, batch sizes seen and images drawn, for metrics and tests."""
    engine: LocalEngine = request.app.state.engine
    return engine.stats()


def _handle_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Any exception in the worker protocol's envelope: the same translation as the gateway's (``as_gateway_error``)."""
    if isinstance(exc, ClientGone):
        return Response(b"", status_code=CLIENT_CLOSED_REQUEST)
    error = as_gateway_error(exc)
    if error is None:
        log.error("worker_unhandled_exception", exc_info=exc)
        error = GatewayError(ErrorCode.INTERNAL, "internal error in the local worker")
    status, headers, body = error_answer(error, protocol.ERRORS)
    return Response(body, status_code=status, media_type=JSON, headers=headers)


def create_worker_app(settings: LocalBackendSettings) -> Litestar:
    """The worker app: a ``LocalEngine`` for ``settings``, started and closed by the app's lifespan."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        engine = LocalEngine(settings, name="worker")
        await engine.start()
        app.state.engine = engine
        try:
            yield
        finally:
            await engine.aclose()

    return Litestar(
        route_handlers=[generate, health, stats],
        lifespan=[lifespan],
        exception_handlers={Exception: _handle_error},
        request_max_body_size=64 * 1024 * 1024,  # input images travel as base64 inside the JSON
        openapi_config=None,
        debug=False,
    )


def local_settings(config: GatewayConfigLike) -> LocalBackendSettings | None:
    """The first ``kind: local`` provider of a gateway config: what a worker serves."""
    for provider in config.providers.values():
        if isinstance(provider, LocalBackendSettings):
            return provider
    return None


def serve_worker(config: GatewayConfigLike, host: str, port: int) -> int:
    """Serve the config's local models on ``host:port`` until stopped; 1 when there is nothing to serve."""
    import uvicorn

    settings = local_settings(config)
    if settings is None or not settings.models:
        print("config error: a worker needs a `kind: local` provider with `models`", file=sys.stderr)
        return 1
    uvicorn.run(create_worker_app(settings), host=host, port=port, log_level="warning", access_log=False)
    return 0
