"""The local engine as a standalone worker server, so GPU nodes scale apart from gateway replicas.

``image-gateway-worker --config FILE`` serves the models of the config's first
``kind: local`` provider on this machine's device. The gateway reaches it through a
``kind: local`` provider whose ``workers`` lists its URL (see ``schemas.worker``).
A client that hangs up while its request waits in the queue has it dropped.

The worker's credential is the provider's ``worker_token``, a secret it shares with the
gateway: every route wants ``Authorization: Bearer <worker_token>`` (401 in the worker
protocol's error shape otherwise, compared in constant time), except ``/health`` asked
with no credential at all, which answers only ``{"status": ...}`` with its 200 or 503 (what
the orchestrator's probe needs; the device and each model's state need the token). A
worker with no token serves beyond loopback only with ``allow_unauthenticated: true``.

``GET /metrics`` (with the token, as Prometheus sends it from a ``credentials_file``) is the
Prometheus exposition of ``local_backend.metrics``: queue depth, batches, requests by outcome,
images, energy, health and each model's state.
"""

from __future__ import annotations

import hashlib
import hmac
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Protocol

import structlog
from litestar import Litestar, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from local_backend.engine import EngineStats, LocalEngine
from local_backend.metrics import CONTENT_TYPE, WorkerMetrics
from schemas import worker as protocol
from schemas.canonical import ErrorCode, GatewayError, as_gateway_error
from schemas.dialect import error_answer
from schemas.disconnect import CLIENT_CLOSED_REQUEST, ClientGone, unless_client_leaves
from schemas.local import LocalBackendSettings
from schemas.net import is_loopback

__all__ = ["WorkerCredential", "create_worker_app", "local_settings", "serve_worker", "worker_refusal"]

log = structlog.get_logger("local_backend.server")
JSON = "application/json"


class GatewayConfigLike(Protocol):
    """What a worker reads of the gateway's config (``gateway.config.GatewayConfig``)."""

    @property
    def providers(self) -> Mapping[str, object]: ...


class WorkerCredential:
    """The worker's token, kept as its SHA-256 digest; what a request presents is compared in constant time."""

    def __init__(self, token: str) -> None:
        self._digest = hashlib.sha256(token.encode()).digest() if token else None

    @property
    def required(self) -> bool:
        return self._digest is not None

    def presented(self, connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
        """Whether the request carries an ``Authorization`` header at all."""
        return "authorization" in connection.headers

    def check(self, connection: ASGIConnection[Any, Any, Any, Any]) -> None:
        """Nothing when the request presents the token (or none is required); a 401 ``GatewayError`` otherwise."""
        if self._digest is None:
            return
        scheme, _, token = (connection.headers.get("authorization") or "").partition(" ")
        # Hashed first: the comparison takes the same time whatever the length presented.
        digest = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest()
        if scheme.lower() == "bearer" and hmac.compare_digest(digest, self._digest):
            return
        raise GatewayError(
            ErrorCode.UNAUTHORIZED,
            "this worker wants the gateway's worker_token: send `Authorization: Bearer <worker_token>`",
            headers={"WWW-Authenticate": "Bearer"},
        )


def credential_of(connection: ASGIConnection[Any, Any, Any, Any]) -> WorkerCredential:
    return connection.app.state.credential  # type: ignore[no-any-return]


def needs_credential(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    credential_of(connection).check(connection)


@post(protocol.GENERATE_PATH, status_code=200, guards=[needs_credential])
async def generate(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Draw one canonical request; dropped from the queue if its client hangs up first."""
    engine: LocalEngine = request.app.state.engine
    canonical = protocol.decode_request(await request.body())
    result = await unless_client_leaves(request.receive, engine.generate(canonical))
    energy = result.energy
    metrics_of(request).answered(
        canonical.model, len(result.images), energy.kwh if energy else None, energy.method if energy else None
    )
    return Response(protocol.encode_result(result), media_type=JSON)


def metrics_of(connection: ASGIConnection[Any, Any, Any, Any]) -> WorkerMetrics:
    return connection.app.state.metrics  # type: ignore[no-any-return]


@get("/metrics", sync_to_thread=False, guards=[needs_credential])
def prometheus_metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The worker's Prometheus exposition (``local_backend.metrics``), with its ``worker_token`` like every route."""
    return Response(metrics_of(request).render(), headers={"content-type": CONTENT_TYPE})


@get(protocol.HEALTH_PATH)
async def health(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """200 when every configured model loaded, 503 otherwise; the body says how each model is.

    A worker missing one model's weights is not healthy (``degraded``: its other models
    still serve the requests that reach it), so the orchestrator and the operator see it.
    Asked with no credential at all (a kubelet's probe) a worker that wants a token answers
    the status alone; a wrong one is a 401, so a gateway holding a stale token is not ready.
    """
    engine: LocalEngine = request.app.state.engine
    credential = credential_of(request)
    anonymous = credential.required and not credential.presented(request)
    if not anonymous:
        credential.check(request)
    status = "ok" if engine.healthy else "degraded" if engine.ready else "unavailable"
    body: dict[str, Any] = {"status": status}
    if not anonymous:
        stats = engine.stats()
        body.update(device=stats.device, models=stats.models)
    return Response(body, status_code=200 if engine.healthy else 503)


@get(protocol.STATS_PATH, sync_to_thread=False, guards=[needs_credential])
def stats(request: Request[Any, Any, Any]) -> EngineStats:
    """Queue depth, batch sizes seen and images drawn, for metrics and tests."""
    engine: LocalEngine = request.app.state.engine
    return engine.stats()


def _handle_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Any exception in the worker protocol's envelope: the same translation as the gateway's (``as_gateway_error``)."""
    generating = request.scope.get("path") == protocol.GENERATE_PATH
    if isinstance(exc, ClientGone):
        if generating:
            metrics_of(request).failed("client_closed")
        return Response(b"", status_code=CLIENT_CLOSED_REQUEST)
    error = as_gateway_error(exc)
    if error is None:
        log.error("worker_unhandled_exception", exc_info=exc)
        error = GatewayError(ErrorCode.INTERNAL, "internal error in the local worker")
    if generating:
        metrics_of(request).failed(error.code.value)
    status, headers, body = error_answer(error, protocol.ERRORS)
    return Response(body, status_code=status, media_type=JSON, headers=headers)


def create_worker_app(settings: LocalBackendSettings, name: str = "worker") -> Litestar:
    """The worker app: a ``LocalEngine`` for ``settings`` (the config's provider ``name``, which its errors name),
    started and closed by the app's lifespan."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        metrics: WorkerMetrics = app.state.metrics
        engine = LocalEngine(settings, name=name, observer=metrics)
        await engine.start()
        app.state.engine = engine
        metrics.attach(engine)
        try:
            yield
        finally:
            metrics.detach()
            await engine.aclose()

    app = Litestar(
        route_handlers=[generate, health, stats, prometheus_metrics],
        lifespan=[lifespan],
        exception_handlers={Exception: _handle_error},
        request_max_body_size=64 * 1024 * 1024,  # input images travel as base64 inside the JSON
        openapi_config=None,
        debug=False,
    )
    app.state.credential = WorkerCredential(settings.worker_token)
    app.state.metrics = WorkerMetrics()
    return app


def local_settings(config: GatewayConfigLike) -> LocalBackendSettings | None:
    """The first ``kind: local`` provider of a gateway config: what a worker serves."""
    for provider in config.providers.values():
        if isinstance(provider, LocalBackendSettings):
            return provider
    return None


def worker_refusal(settings: LocalBackendSettings, host: str) -> str | None:
    """Why a worker with ``settings`` must not listen on ``host``; None when it may.

    Without a ``worker_token`` anyone who reaches the port is served: only on loopback, or
    where the operator says so (``allow_unauthenticated``: a network nothing else reaches).
    """
    if settings.worker_token or settings.allow_unauthenticated or is_loopback(host):
        return None
    return (
        f"a worker listening on {host} needs the local provider's `worker_token` (the secret the gateway sends,"
        " e.g. `worker_token: ${WORKER_TOKEN}` in both configs), or `allow_unauthenticated: true` where nothing"
        " but the gateway can reach it"
    )


def serve_worker(config: GatewayConfigLike, host: str, port: int) -> int:
    """Serve the config's local models on ``host:port`` until stopped; 1 when there is nothing to serve,
    or when it would listen beyond loopback with no ``worker_token`` (see ``worker_refusal``)."""
    import uvicorn

    settings = local_settings(config)
    if settings is None or not settings.models:
        print("config error: a worker needs a `kind: local` provider with `models`", file=sys.stderr)
        return 1
    refusal = worker_refusal(settings, host)
    if refusal is not None:
        print(f"config error: {refusal}", file=sys.stderr)
        return 1
    if not settings.worker_token:
        log.warning("worker_open", host=host, detail="no worker_token: whoever reaches this port is served")
    name = next((name for name, provider in config.providers.items() if provider is settings), "worker")
    uvicorn.run(create_worker_app(settings, name), host=host, port=port, log_level="warning", access_log=False)
    return 0
