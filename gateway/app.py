"""The Litestar app factory and the lifespan that owns the shared resources."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
import structlog
from litestar import Litestar, Request, Response, get
from litestar.openapi import OpenAPIConfig
from litestar.params import FromPath
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from adapters import Adapter, build_adapter
from adapters.upstream import UpstreamClient, build_upstream_client
from gateway import serving
from gateway.admission.auth import Authenticator
from gateway.admission.gate import Admission
from gateway.admission.ratelimit import Limiter, MemoryLimiter, RedisLimiter
from gateway.config import CONFIG_ENV, GatewayConfig, load_config, provider_kind
from gateway.console.admin import admin_handlers, console_lifespan
from gateway.images import ImageStore, StoreUnavailable, build_image_store
from gateway.jobs.routes import JOB_ROUTES
from gateway.jobs.service import Jobs, build_job_queue
from gateway.jobs.webhooks import Webhooks
from gateway.memory import return_large_buffers
from gateway.observability import metrics, tracing
from gateway.observability.logs import RequestIdMiddleware, config_secrets, configure_logging
from gateway.redis_health import check_eviction_policy, start_probe
from gateway.request.docs_assets import assets_router, render_plugins
from gateway.request.errors import handle_exception
from gateway.request.idempotency import Idempotency
from gateway.request.mounts import MOUNTS
from gateway.request.openapi import DocumentedRoute, add_dialect_routes
from gateway.request.pipeline import dialect_route_for, serve_dialect_route
from gateway.routing.cooldown import Cooldowns
from gateway.routing.dedup import Dedup
from gateway.routing.provider_health import ProviderHealth
from gateway.routing.router import Router
from gateway.shutdown import STEP_S, Shutdown, bounded
from gateway.state import Gateway
from schemas.canonical import ErrorCode, GatewayError

__all__ = ["create_app"]

log = structlog.get_logger("gateway.app")

# The longest start-up waits for the providers' first readiness check (workers that do not answer take longer).
FIRST_CHECK_S = 2.0


def build_adapters(config: GatewayConfig, client: UpstreamClient) -> dict[str, Adapter]:
    return {
        name: build_adapter(provider_kind(provider), name, provider, client)
        for name, provider in config.providers.items()
    }


def build_limiter(config: GatewayConfig) -> tuple[Limiter, aioredis.Redis | None]:
    """The Redis limiter when a Redis is configured, else the in-memory one."""
    if not config.redis.url:
        return MemoryLimiter(), None
    client = aioredis.Redis.from_url(
        config.redis.url,
        socket_timeout=config.redis.timeout_s,
        socket_connect_timeout=config.redis.timeout_s,
        health_check_interval=5,
        # No client-side retries: while Redis is away the configured policy answers at once,
        # instead of every request waiting through redis-py's backoff.
        retry=Retry(NoBackoff(), 0),
    )
    limiter = RedisLimiter(
        client, config.redis.url, on_failure=config.redis.on_failure, timeout_s=config.redis.timeout_s
    )
    return limiter, client


async def start_image_store(config: GatewayConfig) -> ImageStore:
    """The configured image store, checked once: a missing bucket or refused credentials are logged
    now and keep ``/ready`` at 503, while clients that want base64 are still served."""
    store = build_image_store(config.image_store)
    try:
        await store.check()
    except StoreUnavailable as exc:
        log.error("image_store_unavailable", detail=str(exc))
    return store


@asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    config: GatewayConfig = app.state.config
    limiter, redis_client = build_limiter(config)
    if redis_client is not None:  # jobs, budgets and limits live there: a Redis that evicts is refused
        try:
            await check_eviction_policy(redis_client, config.redis.evicting_policy)
        except BaseException:
            await limiter.aclose()
            raise
    client = build_upstream_client(config.server.upstream_transport)
    adapters = build_adapters(config, client)
    for adapter in adapters.values():
        adapter.observe(metrics.LocalBackendMetrics())  # backends with a queue report it (the local one)
        await adapter.start()
    redis_probe = start_probe(limiter, redis_client, config.redis.probe_interval_s)  # a lost Redis shows
    cooldowns = Cooldowns(redis_client, config.redis.key_prefix)
    auth = Authenticator(config.auth)
    if auth.open:
        log.warning("gateway_open", detail="no inbound API keys configured: every client is admitted")
    image_store = await start_image_store(config)
    webhooks = Webhooks(config)
    router = Router(config, adapters, limiter, cooldowns)
    app.state.gateway = Gateway(
        config=config,
        client=client,
        router=router,
        image_store=image_store,
        admission=Admission(config, auth, limiter),
        cooldowns=cooldowns,
        webhooks=webhooks,
        dedup=Dedup(config, router, image_store, redis_client),
        redis=redis_client,
        idempotency=Idempotency(config, image_store, redis_client),
        adapters=adapters,
    )
    gateway = app.state.gateway
    # Each provider's readiness, in the background: /ready reads it and never waits on a worker.
    providers = ProviderHealth(adapters, config.server.provider_probe_interval_s).start()
    app.state.providers = providers
    await providers.first_check(FIRST_CHECK_S)
    jobs = Jobs(gateway, build_job_queue(gateway))
    gateway.jobs = jobs
    jobs.start()
    # SIGTERM stops the job consumers at once, and the process ends by the grace plus a margin (gateway/shutdown.py).
    shutdown = Shutdown(config.server.shutdown_grace_s)
    shutdown.install()
    shutdown.on_begin(jobs.stop_taking)
    tracing.start()  # OTLP export when OTEL_EXPORTER_OTLP_*ENDPOINT is set; off otherwise
    try:
        yield
    finally:
        shutdown.begin()  # a no-op after a signal; else (an app stopped in a test) the grace starts now
        try:
            # The jobs running, and the generations whose clients left while an Idempotency-Key keeps their
            # answer for a retry, share what is left of the grace.
            left = shutdown.left()
            await asyncio.gather(
                jobs.aclose(left),
                bounded(gateway.idempotency.aclose(left), left + shutdown.closing_left(STEP_S), "idempotency"),
            )
            # Each step is bounded: a Redis or a backend that stopped answering cannot keep the process.
            if redis_probe is not None:
                await redis_probe.aclose(shutdown.closing_left(STEP_S))
            await providers.aclose(shutdown.closing_left(STEP_S))
            for name, adapter in adapters.items():
                await bounded(adapter.aclose(), shutdown.closing_left(STEP_S), f"adapter:{name}")
            await bounded(limiter.aclose(), shutdown.closing_left(STEP_S), "limiter")
            await bounded(client.aclose(), shutdown.closing_left(STEP_S), "upstream_client")
            await bounded(image_store.aclose(), shutdown.closing_left(STEP_S), "image_store")
            await bounded(webhooks.aclose(), shutdown.closing_left(STEP_S), "webhooks")
            tracing.stop()  # flushes the spans still queued
        finally:
            shutdown.done()


@get("/health", sync_to_thread=False, tags=["ops"])
def health() -> dict[str, str]:
    """The process is alive and serving."""
    return {"status": "ok"}


@get("/ready", tags=["ops"])
async def ready(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """Ready for traffic: config loaded, the image store usable, and Redis reachable when one is configured
    with ``on_failure: closed`` (with ``open`` a lost Redis is degraded, not down).

    A provider that cannot serve (the local models not loaded, no GPU worker answering) is that provider's
    state, shown under ``providers`` as the background check last saw it (gateway/routing/provider_health.py), never
    a 503: the replica still serves every other provider, and a model's next target. The body is public (the
    kubelet's probe): it names no worker address, server path or secret.
    """
    gateway: Gateway = request.app.state.gateway
    checks: dict[str, Any] = {"config": "ok"}
    ok = True
    if gateway.redis is not None:
        try:
            await gateway.redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:  # any failure means Redis is away; the reason is reported, never raised
            checks["redis"] = f"unreachable ({type(exc).__name__}): {gateway.config.redis.on_failure}"
            ok = gateway.config.redis.on_failure == "open"
    try:
        await gateway.image_store.check()
        checks["image_store"] = "ok"
    except StoreUnavailable as exc:  # URL answers would fail: not ready
        checks["image_store"] = exc.public
        ok = False
    providers: ProviderHealth = request.app.state.providers
    body = {
        "status": "ready" if ok else "not ready",
        "checks": checks,
        "providers": providers.public(),
        "models": gateway.router.model_names,
    }
    return Response(body, status_code=200 if ok else 503)


def metrics_protected(config: GatewayConfig) -> bool:
    """Whether /metrics wants an admin key: ``server.metrics_access``, or, when it is null, whether admin keys exist."""
    access = config.server.metrics_access
    return access == "admin_key" or (access is None and bool(config.auth.admin_keys))


@get("/metrics", tags=["ops"], include_in_schema=False)
async def prometheus_metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Prometheus exposition of the gateway's metrics (see docs/operations.md); with ``server.metrics_access``
    ``admin_key`` (the default once admin keys exist) it wants ``Authorization: Bearer <admin key>``, else 401."""
    if metrics_protected(request.app.state.config):
        from gateway.console.admin import gate_of

        gate_of(request).admit(request)  # the admin API's check: the key hashed and compared in constant time
    # Given as the header: Litestar would append a second `; charset=utf-8` to a text/ media type.
    return Response(metrics.render(), headers={"content-type": metrics.CONTENT_TYPE_LATEST})


@get("/images/{name:str}", tags=["images"])
async def stored_image(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[bytes]:
    """An image kept for a client that asked for a URL (valid for the store's TTL)."""
    gateway: Gateway = request.app.state.gateway
    try:
        found = await gateway.image_store.get(name)
    except StoreUnavailable as exc:
        raise GatewayError(ErrorCode.UPSTREAM_ERROR, str(exc)) from exc
    if found is None:
        raise GatewayError(ErrorCode.INVALID_REQUEST, "no such image, or it has expired", status=404)
    data, media_type = found
    return Response(data, media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})


class GatewayApp(Litestar):
    """Litestar for health, ready, metrics, stored images and docs; every dialect route goes to
    the one request pipeline (``gateway.pipeline``) before Litestar routes anything."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        route = dialect_route_for(scope)
        if route is not None:
            await serve_dialect_route(self.state.gateway, route, scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def documented_routes() -> list[DocumentedRoute]:
    """The dialect routes for the OpenAPI document, from the table the pipeline serves."""
    return [
        DocumentedRoute(
            path=mount.prefix + mount.endpoint.path,
            methods=mount.methods,
            endpoint=mount.endpoint,
            name=f"{mount.endpoint.dialect}:{mount.prefix or 'root'}:{mount.endpoint.path}",
        )
        for mount in MOUNTS
    ]


def create_app_from_env() -> Litestar:
    """The app for a server worker process: the config file named by ``IMAGE_GATEWAY_CONFIG``."""
    return_large_buffers()
    return create_app(load_config(os.environ.get(CONFIG_ENV) or None))


def create_app(config: GatewayConfig | None = None) -> Litestar:
    """The gateway app for ``config`` (the built-in default when None)."""
    config = config or load_config()
    configure_logging(config.server.log_level, config.server.log_prompts, secrets=config_secrets(config))
    serving.configure(config.server.max_header_bytes, config.server.header_timeout_s)  # this process's connections
    app = GatewayApp(
        route_handlers=[
            health,
            ready,
            prometheus_metrics,
            stored_image,
            *JOB_ROUTES,
            assets_router(),
            *admin_handlers(),
        ],
        middleware=[RequestIdMiddleware],
        lifespan=[lifespan, console_lifespan],  # the console's chart readings, once the gateway is built
        logging_config=None,  # structlog writes every line; Litestar's own config would start a queue thread
        exception_handlers={Exception: handle_exception},
        request_max_body_size=config.server.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="image-gateway",
            version="0.1.0",
            path="/docs",
            description="Image generation in the Melious, Nebul, Pomelo and NebulaBlock dialects. See README.md.",
            render_plugins=render_plugins(),  # the pages' scripts are served from the package: /docs works offline
        ),
        debug=False,
    )
    app.state.config = config
    add_dialect_routes(app, documented_routes())
    return app
