"""The console (``/console``) and its JSON admin API (``/admin/api/...``), on Litestar's side of the app.

Who may see them:
- with ``auth.admin_keys`` configured, the admin API wants ``Authorization: Bearer <admin key>``
  (hashed and compared like the inbound keys); the console's page and scripts hold no data and
  are served to anyone, and its login form keeps the key in the tab's ``sessionStorage``;
- with none configured, both are served only when ``server.host`` is a loopback address and the
  request comes from loopback too (the page says so); otherwise both are 404, as if not there.

The status page's charts of the last hour (``/admin/api/charts``) come from Prometheus or from this
process's own readings (``gateway/console/charts.py``); ``console_lifespan`` keeps those readings.

The status stream (``/admin/api/status/events``) is server-sent events read by ``fetch`` (so the
key travels in the header, never in a URL): one snapshot a second, shared by every open page;
each stream ends after ``EVENTS_PER_STREAM`` events and the page reconnects.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import msgspec
from litestar import Litestar, Response, get
from litestar.connection import ASGIConnection
from litestar.datastructures import CacheControlHeader, State
from litestar.di import Provide
from litestar.exceptions import NotFoundException
from litestar.handlers import BaseRouteHandler
from litestar.params import FromPath
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.router import Router
from litestar.static_files import create_static_files_router

from gateway.admission.auth import Authenticator
from gateway.config import AuthConfig, GatewayConfig, InboundKey
from gateway.console.charts import Charts, ChartsAnswer
from gateway.console.status import (
    BudgetsAnswer,
    JobsStatus,
    LimitsAnswer,
    LocalBackendStatus,
    ModelsAnswer,
    ProviderStatus,
    RecentRequest,
    StatusAnswer,
    StatusSampler,
)
from gateway.state import Gateway, Injected
from schemas.net import is_loopback

__all__ = [
    "CONSOLE_DIR",
    "EVENTS_PER_STREAM",
    "EVENT_INTERVAL_S",
    "AdminGate",
    "admin_handlers",
    "console_lifespan",
    "gate_of",
    "provide_admin_gate",
]

CONSOLE_DIR = Path(__file__).parent
EVENT_INTERVAL_S = 1.0
# Events per stream: then it ends and the page reconnects, so an open console never holds a
# shutting-down gateway for its whole grace period.
EVENTS_PER_STREAM = 15
# The console's own files only: no CDN, no inline script, images from data: and blob: URLs.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
Access = Literal["admin_key", "loopback", "off"]


def host_name(header: str | None) -> str:
    """The name in a ``Host`` header, its port left out (``[::1]:8080`` → ``::1``); "" when there is none."""
    if not header:
        return ""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else ""
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class AdminGate:
    """Decides, from the config, whether a request may see the console and the admin API."""

    def __init__(self, config: GatewayConfig) -> None:
        keys = [InboundKey(name=key.name, hash=key.hash) for key in config.auth.admin_keys]
        self._auth = Authenticator(AuthConfig(keys=keys))  # the inbound keys' hashing and comparison
        if keys:
            self.access: Access = "admin_key"
        elif is_loopback(config.server.host):
            self.access = "loopback"
        else:
            self.access = "off"

    def visible(self, connection: ASGIConnection[Any, Any, Any, Any]) -> None:
        """The console exists for this request, or a 404 like any unknown path.

        Without admin keys, the request must come from loopback AND name a loopback host: a page the
        operator visits can make the browser send requests to 127.0.0.1 under a name of its own (DNS
        rebinding), and such a request carries that name in ``Host``.
        """
        if self.access == "admin_key":
            return
        client = connection.client.host if connection.client else ""
        host = host_name(connection.headers.get("host"))
        if self.access == "off" or not is_loopback(client) or not is_loopback(host):
            raise NotFoundException()

    def admit(self, connection: ASGIConnection[Any, Any, Any, Any]) -> None:
        """The admin API for this request: its admin key, or the loopback rule; a 401 or a 404 otherwise."""
        self.visible(connection)
        if self.access == "admin_key":
            self._auth.authenticate(connection.headers)  # a 401 GatewayError when missing or wrong


def provide_admin_gate(state: State) -> AdminGate:
    """The ``admin_gate`` dependency: one per app, made from its config on first use."""
    gate = state.get("admin_gate")
    if gate is None:
        gate = state["admin_gate"] = AdminGate(state.config)
    return gate  # type: ignore[no-any-return]


def gate_of(connection: ASGIConnection[Any, Any, Any, Any]) -> AdminGate:
    """The app's ``AdminGate``, for the guards (they take a connection, not dependencies)."""
    return provide_admin_gate(connection.app.state)


def console_visible(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    gate_of(connection).visible(connection)


def admin_only(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    gate_of(connection).admit(connection)


def provide_sampler(state: State) -> StatusSampler:
    """The ``sampler`` dependency: the status sampler of the app's gateway, shared by every page."""
    sampler = state.get("admin_status")
    if sampler is None or sampler.gateway is not state.gateway:
        sampler = state["admin_status"] = StatusSampler(state.gateway)
    return sampler  # type: ignore[no-any-return]


def provide_charts(state: State) -> Charts:
    """The ``console_charts`` dependency: the readings ``console_lifespan`` keeps."""
    return state.console_charts  # type: ignore[no-any-return]


@get("/console", guards=[console_visible], include_in_schema=False, sync_to_thread=False)
def console_page() -> Response[bytes]:
    """The console's one page (playground and status), from the package."""
    page = (CONSOLE_DIR / "index.html").read_bytes()
    return Response(page, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


@get("/status")
async def status(admin_gate: Injected[AdminGate], sampler: Injected[StatusSampler]) -> StatusAnswer:
    """Everything the status page shows: ``access`` (how this console is protected:
    ``admin_key`` or ``loopback``), ``providers`` (state ``up`` or ``cooling_down`` with ``cooling_until``,
    and over the last ``recent.window_s`` seconds: calls, errors, error rate, p50/p95 latency in ms),
    ``models`` (names, aliases, targets in order), ``limits`` (use of each key's, model's and provider's rate
    limit: ``used`` of ``limit`` per ``period_s``), ``budgets`` (each key's spent of its budget this period),
    ``local`` (each local backend: device, queue depth, batch
    sizes, images/s, models), ``jobs`` (``available: false`` with the reason until jobs exist)."""
    return msgspec.convert({"access": admin_gate.access, **await sampler.take()}, StatusAnswer)


@get("/providers")
async def providers(sampler: Injected[StatusSampler]) -> list[ProviderStatus]:
    """Each provider: its kind, ``up`` or ``cooling_down`` (until when), and its recent error rate and latency."""
    return msgspec.convert(await sampler.providers(), list[ProviderStatus])


@get("/models")
async def models(config: Injected[GatewayConfig], sampler: Injected[StatusSampler]) -> ModelsAnswer:
    """The models clients may ask for, with their aliases and targets in order; ``auth_open``: whether the
    dialect routes need an inbound key."""
    answer = {"auth_open": not config.auth.keys, "models": sampler.models()}
    return msgspec.convert(answer, ModelsAnswer)


@get("/limits")
async def limits(sampler: Injected[StatusSampler]) -> LimitsAnswer:
    """Rate-limit use per inbound key (and per model and provider): units used of each configured limit."""
    return msgspec.convert(await sampler.limits(), LimitsAnswer)


@get("/budgets")
async def budgets(sampler: Injected[StatusSampler]) -> BudgetsAnswer:
    """Each inbound key's budget in its current UTC day or month: spent (and reserved) of the amount, and when
    it renews."""
    return msgspec.convert(await sampler.budgets(), BudgetsAnswer)


@get("/local")
async def local(sampler: Injected[StatusSampler]) -> list[LocalBackendStatus]:
    """Each local backend: device, queue depth, images in the running batch, batch sizes, images/s, models;
    for remote workers, each worker's health."""
    return msgspec.convert(await sampler.local(), list[LocalBackendStatus])


@get("/jobs")
async def jobs(sampler: Injected[StatusSampler]) -> JobsStatus:
    """Async jobs: the queue, and this process's jobs by status."""
    return msgspec.convert(await sampler.jobs(), JobsStatus)


@get("/charts")
async def charts(console_charts: Injected[Charts]) -> ChartsAnswer:
    """The status page's charts of the last hour, a point a minute: requests and failed provider calls by
    provider, p95 latency (by provider, and of all requests), images, cost, energy and queue depth. ``source``:
    ``prometheus`` (``console.prometheus_url``: every replica it scrapes) or ``process`` (this process's own
    readings, labelled so in ``note``; ``error`` says why when Prometheus failed). At most 10 s old."""
    return msgspec.convert(await console_charts.answer(), ChartsAnswer)


@get("/requests/{request_id:str}")
async def recent_request(gateway: Injected[Gateway], request_id: FromPath[str]) -> RecentRequest:
    """One of this process's last dialect requests by its ``X-Request-ID``: the model, the provider that
    answered, the outcome, the images, the cost (as ``X-Gateway-Cost`` writes it) and the energy. A streamed
    answer carries none of these in its headers; the playground reads them here once its stream ends."""
    found = gateway.recent_requests.get(request_id)
    if found is None:
        raise NotFoundException("no recent request has this id in this process")
    return msgspec.convert(found, RecentRequest)


@get("/status/events")
async def status_events(admin_gate: Injected[AdminGate], sampler: Injected[StatusSampler]) -> ServerSentEvent:
    """The status (as ``/admin/api/status``) as server-sent events named ``status``, one a second, fifteen of
    them; then the stream ends and the client reconnects. Read it with ``fetch`` to send the admin key as a
    header (``EventSource`` cannot)."""
    access = admin_gate.access

    async def events() -> AsyncIterator[ServerSentEventMessage]:
        for number in range(EVENTS_PER_STREAM):
            if number:
                await asyncio.sleep(EVENT_INTERVAL_S)
            snapshot = msgspec.convert({"access": access, **await sampler.snapshot()}, StatusAnswer)
            yield ServerSentEventMessage(event="status", data=msgspec.json.encode(snapshot).decode(), retry=1000)

    return ServerSentEvent(events(), headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def admin_handlers() -> list[Any]:
    """The console's page and files, and the admin API, for ``create_app``."""
    assets = create_static_files_router(
        path="/console/assets",
        directories=[CONSOLE_DIR / "assets"],  # the page itself is served at /console alone, with its headers
        name="console-assets",
        include_in_schema=False,
        guards=[console_visible],
        cache_control=CacheControlHeader(no_cache=True),
        send_as_attachment=False,
    )
    handlers = [status, providers, models, limits, budgets, local, jobs, charts, recent_request, status_events]
    for handler in handlers:  # the docstrings document the API (the app leaves use_handler_docstrings off)
        handler.description = handler.description or inspect.cleandoc(handler.fn.__doc__ or "")
    api = Router(
        path="/admin/api",
        route_handlers=handlers,
        guards=[admin_only],
        dependencies={
            "sampler": Provide(provide_sampler, sync_to_thread=False),
            "console_charts": Provide(provide_charts, sync_to_thread=False),
        },
        tags=["admin"],
    )
    return [console_page, assets, api]


@asynccontextmanager
async def console_lifespan(app: Litestar) -> AsyncIterator[None]:
    """Keeps this process's readings for the charts (after the app's own lifespan has built the gateway)."""
    keeper = Charts(app.state.gateway, app.state.config.console).start()
    app.state.console_charts = keeper
    try:
        yield
    finally:
        await keeper.aclose()
