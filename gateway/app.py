"""The Litestar app factory and the lifespan that owns the shared resources."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
import structlog
from litestar import Litestar, Request, Response, get
from litestar import Router as Routes
from litestar.datastructures import State
from litestar.di import Provide
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
from gateway.console.admin import AdminGate, admin_handlers, console_lifespan, provide_admin_gate
from gateway.images import StoreUnavailable, build_image_store
from gateway.images.health import StoreHealth
from gateway.jobs.routes import JOB_ROUTES
from gateway.jobs.service import Jobs, build_job_queue
from gateway.jobs.webhooks import Webhooks
from gateway.memory import return_large_buffers
from gateway.observability import metrics, tracing
from gateway.observability.logs import RequestIdMiddleware, config_secrets, configure_logging
from gateway.readiness import Readiness
from gateway.redis_health import check_eviction_policy, start_probe
from gateway.request.docs_assets import assets_router, render_plugins
from gateway.request.errors import handle_exception
from gateway.request.idempotency import Idempotency
from gateway.request.mounts import MOUNTS
from gateway.request.openapi import DocumentedRoute, add_dialect_routes
from gateway.request.pipeline import dialect_handlers, dialect_route_for, serve_dialect_route
from gateway.routing.cooldown import Cooldowns
from gateway.routing.dedup import Dedup
from gateway.routing.provider_health import ProviderHealth
from gateway.routing.router import Router
from gateway.shutdown import STEP_S, Shutdown, bounded
from gateway.state import Gateway, Injected
from schemas.canonical import ErrorCode, GatewayError

__all__ = ["DISPATCH_ENV", "create_app"]

log = structlog.get_logger("gateway.app")

# The longest start-up waits for the providers' first readiness check (workers that do not answer take longer).
FIRST_CHECK_S = 2.0
# Who routes the dialect requests: "litestar" (the default: its route handlers) or "direct" (the pipeline's own
# dispatch before Litestar, kept for `make bench` to compare; docs/benchmarks.md).
DISPATCH_ENV = "IMAGE_GATEWAY_DISPATCH"
DISPATCHES = ("litestar", "direct")


def build_adapters(config: GatewayConfig, client: UpstreamClient) -> dict[str, Adapter]:
    return {
        name: build_adapter(provider_kind(provider), name, provider, client)
        for name, provider in config.providers.items()
    }


def build_redis_client(config: GatewayConfig) -> aioredis.Redis | None:
    """The one redis-py client that limits' reads, cooldowns, dedup, Idempotency-Key and ``/ready`` share (the
    lifespan closes it); None without a Redis."""
    if not config.redis.url:
        return None
    return aioredis.Redis.from_url(
        config.redis.url,
        socket_timeout=config.redis.timeout_s,
        socket_connect_timeout=config.redis.timeout_s,
        health_check_interval=5,
        # No client-side retries: while Redis is away the configured policy answers at once,
        # instead of every request waiting through redis-py's backoff.
        retry=Retry(NoBackoff(), 0),
    )


def build_limiter(config: GatewayConfig, client: aioredis.Redis | None) -> Limiter:
    """The Redis limiter when a Redis is configured (on the shared ``client``), else the in-memory one."""
    if client is None or not config.redis.url:
        return MemoryLimiter()
    redis = config.redis
    return RedisLimiter(
        client,
        redis.url,
        on_failure=redis.on_failure,
        budgets_on_failure=redis.budgets_on_failure,
        timeout_s=redis.timeout_s,
    )


async def start_image_store(config: GatewayConfig) -> StoreHealth:
    """The configured image store, checked once now and then in the background (gateway/images/health.py): a
    missing bucket or refused credentials are logged now and keep ``/ready`` at 503 until the store is seen
    usable, while clients that want base64 are still served."""
    health = StoreHealth(build_image_store(config.image_store), config.image_store.probe_interval_s)
    await health.check()
    return health.start()


@asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    """Builds every shared resource and closes each exactly once, in reverse order, each close bounded
    (gateway/shutdown.py): at the app's end, or at once when a later start-up step fails."""
    config: GatewayConfig = app.state.config
    # SIGTERM stops the job consumers at once, and the process ends by the grace plus a margin (gateway/shutdown.py).
    shutdown = Shutdown(config.server.shutdown_grace_s)
    async with AsyncExitStack() as owned:
        owned.callback(shutdown.done)  # the last step: no watchdog needed any more
        traced: list[bool] = []  # tracing.start() called: tracing.stop() flushes the spans still queued, next to last
        owned.callback(lambda: tracing.stop() if traced else None)

        def closes(what: str, aclose: Callable[[], Awaitable[Any]]) -> None:
            async def close() -> None:  # a Redis or a backend that stopped answering cannot keep the process
                await bounded(aclose(), shutdown.closing_left(STEP_S), what)

            owned.push_async_callback(close)

        redis_client = build_redis_client(config)  # limits, cooldowns, dedup, Idempotency-Key and /ready share it
        if redis_client is not None:
            closes("redis", redis_client.aclose)
            # jobs, budgets and limits live there: a Redis that evicts is refused
            await check_eviction_policy(redis_client, config.redis.evicting_policy)
        limiter = build_limiter(config, redis_client)
        closes("limiter", limiter.aclose)  # its own script connections; the shared client is closed above
        client = build_upstream_client(config.server.upstream_transport)
        closes("upstream_client", client.aclose)
        adapters = build_adapters(config, client)
        for name, adapter in adapters.items():
            adapter.observe(metrics.LocalBackendMetrics())  # backends with a queue report it (the local one)
            closes(f"adapter:{name}", adapter.aclose)
            await adapter.start()
        redis_probe = start_probe(limiter, redis_client, config.redis.probe_interval_s)  # a lost Redis shows
        if redis_probe is not None:
            probe = redis_probe
            owned.push_async_callback(lambda: probe.aclose(shutdown.closing_left(STEP_S)))
        cooldowns = Cooldowns(redis_client, config.redis.key_prefix)
        auth = Authenticator(config.auth)
        if auth.open:
            log.warning("gateway_open", detail="no inbound API keys configured: every client is admitted")
        store_health = await start_image_store(config)
        image_store = store_health.store
        closes("image_store", image_store.aclose)
        owned.push_async_callback(lambda: store_health.aclose(shutdown.closing_left(STEP_S)))
        app.state.readiness = Readiness(store_health, redis_probe.health if redis_probe is not None else None)
        webhooks = Webhooks(config)
        closes("webhooks", webhooks.aclose)
        router = Router(config, adapters, limiter, cooldowns)
        idempotency = Idempotency(config, image_store, redis_client)
        app.state.gateway = gateway = Gateway(
            config=config,
            client=client,
            router=router,
            image_store=image_store,
            admission=Admission(config, auth, limiter),
            cooldowns=cooldowns,
            webhooks=webhooks,
            dedup=Dedup(config, router, image_store, redis_client),
            redis=redis_client,
            idempotency=idempotency,
            adapters=adapters,
        )
        # Each provider's readiness, in the background: /ready reads it and never waits on a worker.
        providers = ProviderHealth(adapters, config.server.provider_probe_interval_s).start()
        owned.push_async_callback(lambda: providers.aclose(shutdown.closing_left(STEP_S)))
        app.state.providers = providers
        await providers.first_check(FIRST_CHECK_S)
        jobs = Jobs(gateway, build_job_queue(gateway))
        gateway.jobs = jobs

        async def finish_work() -> None:
            # The jobs running, and the generations whose clients left while an Idempotency-Key keeps their
            # answer for a retry, share what is left of the grace.
            left = shutdown.left()
            await asyncio.gather(
                jobs.aclose(left),
                bounded(idempotency.aclose(left), left + shutdown.closing_left(STEP_S), "idempotency"),
            )

        owned.push_async_callback(finish_work)
        jobs.start()
        shutdown.install()
        shutdown.on_begin(jobs.stop_taking)
        tracing.start()  # OTLP export when OTEL_EXPORTER_OTLP_*ENDPOINT is set; off otherwise
        traced.append(True)
        owned.callback(shutdown.begin)  # the first step: a no-op after a signal; else the grace starts now
        yield


@get("/health", sync_to_thread=False, tags=["ops"])
def health() -> dict[str, str]:
    """The process is alive and serving."""
    return {"status": "ok"}


def provide_gateway(state: State) -> Gateway:
    """The ``gateway`` dependency: the shared resources the lifespan built."""
    return state.gateway  # type: ignore[no-any-return]


def provide_config(state: State) -> GatewayConfig:
    """The ``config`` dependency: the gateway's config, known before the lifespan runs."""
    return state.config  # type: ignore[no-any-return]


def provide_readiness(state: State) -> Readiness:
    """The ``readiness`` dependency: the checks ``/ready`` reads (gateway/readiness.py)."""
    return state.readiness  # type: ignore[no-any-return]


def provide_provider_health(state: State) -> ProviderHealth:
    """The ``provider_health`` dependency: each provider's readiness as the background check last saw it."""
    return state.providers  # type: ignore[no-any-return]


# Litestar's dependency injection for the routes it serves: a handler names what it needs by parameter.
DEPENDENCIES = {
    "gateway": Provide(provide_gateway, sync_to_thread=False),
    "config": Provide(provide_config, sync_to_thread=False),
    "provider_health": Provide(provide_provider_health, sync_to_thread=False),
    "readiness": Provide(provide_readiness, sync_to_thread=False),
    "admin_gate": Provide(provide_admin_gate, sync_to_thread=False),
}


@get("/ready", tags=["ops"])
async def ready(
    gateway: Injected[Gateway], provider_health: Injected[ProviderHealth], readiness: Injected[Readiness]
) -> Response[dict[str, Any]]:
    """Ready for traffic (200 ``ready``, or ``degraded``), or not (503 ``not ready``): gateway/readiness.py.

    Not ready while the image store has never been usable in this process, or a Redis under ``on_failure:
    closed`` has never answered; a shared store lost after that is ``degraded`` (the replica still serves
    what does not need it), so that one store's outage does not take every replica out at once.

    A provider that cannot serve (the local models not loaded, no GPU worker answering) is that provider's
    state, shown under ``providers`` as the background check last saw it (gateway/routing/provider_health.py), never
    a 503: the replica still serves every other provider, and a model's next target. The body is public (the
    kubelet's probe): it names no worker address, server path or secret.
    """
    ok, body = await readiness.assess(gateway.redis, gateway.config.redis.on_failure)
    body["providers"] = provider_health.public()
    body["models"] = gateway.router.model_names
    return Response(body, status_code=200 if ok else 503)


def metrics_protected(config: GatewayConfig) -> bool:
    """Whether /metrics wants an admin key: ``server.metrics_access``, or, when it is null, whether admin keys exist."""
    access = config.server.metrics_access
    return access == "admin_key" or (access is None and bool(config.auth.admin_keys))


@get("/metrics", tags=["ops"], include_in_schema=False)
async def prometheus_metrics(
    request: Request[Any, Any, Any], config: Injected[GatewayConfig], admin_gate: Injected[AdminGate]
) -> Response[bytes]:
    """Prometheus exposition of the gateway's metrics (see docs/operations.md); with ``server.metrics_access``
    ``admin_key`` (the default once admin keys exist) it wants ``Authorization: Bearer <admin key>``, else 401."""
    if metrics_protected(config):
        admin_gate.admit(request)  # the admin API's check: the key hashed and compared in constant time
    # Given as the header: Litestar would append a second `; charset=utf-8` to a text/ media type.
    return Response(metrics.render(), headers={"content-type": metrics.CONTENT_TYPE_LATEST})


@get("/images/{name:str}", tags=["images"])
async def stored_image(gateway: Injected[Gateway], name: FromPath[str]) -> Response[bytes]:
    """An image kept for a client that asked for a URL (valid for the store's TTL)."""
    try:
        found = await gateway.image_store.get(name)
    except StoreUnavailable as exc:
        raise GatewayError(ErrorCode.UPSTREAM_ERROR, str(exc)) from exc
    if found is None:
        raise GatewayError(ErrorCode.INVALID_REQUEST, "no such image, or it has expired", status=404)
    data, media_type = found
    return Response(data, media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})


class DirectDispatchApp(Litestar):
    """``IMAGE_GATEWAY_DISPATCH=direct``: every dialect path goes to the request pipeline before Litestar
    routes anything (the dispatch before the dialect routes became Litestar route handlers; kept so that
    ``make bench`` can measure the two side by side, docs/benchmarks.md)."""

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


def dispatch_from_env() -> str:
    """``IMAGE_GATEWAY_DISPATCH``: "litestar" (unset) or "direct"; anything else stops the start with why."""
    dispatch = os.environ.get(DISPATCH_ENV) or DISPATCHES[0]
    if dispatch not in DISPATCHES:
        raise ValueError(f"{DISPATCH_ENV} must be one of {', '.join(DISPATCHES)}, not {dispatch!r}")
    return dispatch


def create_app(config: GatewayConfig | None = None, dispatch: str | None = None) -> Litestar:
    """The gateway app for ``config`` (the built-in default when None); ``dispatch`` as ``IMAGE_GATEWAY_DISPATCH``
    (read when None)."""
    config = config or load_config()
    configure_logging(config.server.log_level, config.server.log_prompts, secrets=config_secrets(config))
    serving.configure(config.server.max_header_bytes, config.server.header_timeout_s)  # this process's connections
    app_class = DirectDispatchApp if (dispatch or dispatch_from_env()) == "direct" else Litestar
    app = app_class(
        route_handlers=[
            # The request id of every route but the dialect routes, which bind and echo their own: a dialect
            # route has no middleware at all, so Litestar hands it the request without a layer of its own
            # (an exception handler it adds only around a route that has middleware).
            Routes(
                "/",
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
            ),
            *dialect_handlers(),
        ],
        dependencies=DEPENDENCIES,
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
