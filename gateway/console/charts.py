"""The status page's charts of the last hour: from Prometheus when ``console.prometheus_url`` is set, else from
this process's own readings (``gateway/observability/history.py``), labelled as such.

Each chart is a few lines, each written twice in ``CHARTS``: as PromQL over every replica Prometheus scrapes,
and as a ``Source`` this process reads of its own metrics. The gateway asks Prometheus (``/api/v1/query_range``,
every query of a refresh within ``console.prometheus_timeout_s``, each answer at most ``MAX_ANSWER_BYTES``);
the browser never does, and nothing of the admin API's request (its admin key) goes to Prometheus. When
Prometheus fails, the page says why and shows this process's readings instead. One answer is kept for
``CACHE_S``, so any number of open pages cost one round of queries.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any, Literal, NamedTuple
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp
import msgspec
import structlog

from gateway.config import ConsoleConfig
from gateway.observability import metrics
from gateway.observability.history import STEP_S, MetricHistory, Source
from gateway.shutdown import cancel_and_wait
from gateway.state import Gateway

__all__ = ["CACHE_S", "CHARTS", "MAX_ANSWER_BYTES", "WINDOW_S", "Charts", "ChartsAnswer", "Prometheus"]

log = structlog.get_logger("gateway.console")

WINDOW_S = 3600.0  # the last hour
CACHE_S = 10.0  # one answer serves every page for this long
TICK_S = 15.0  # how often the job queue's depth is read (image_gateway_jobs_waiting)
MAX_ANSWER_BYTES = 4 * 1024 * 1024  # one query_range answer, decompressed
RATE = "2m"  # the window of each rate(): two scrapes at least, at scrape intervals up to a minute


class Line(NamedTuple):
    """One line (or one per label value) of a chart: PromQL whose result's ``label`` names each series
    (None: one series, ``source.name``), and the same numbers read from this process."""

    promql: str
    label: str | None
    source: Source


class Chart(NamedTuple):
    id: str
    title: str
    unit: str
    lines: tuple[Line, ...]


def _per_minute(metric: str, by: str, where: str = "") -> str:
    return f"sum by ({by}) (rate({metric}{where}[{RATE}])) * 60"


def _p95(metric: str, by: str = "") -> str:
    return f"histogram_quantile(0.95, sum by (le{', ' + by if by else ''}) (rate({metric}_bucket[{RATE}]))) * 1000"


CHARTS: tuple[Chart, ...] = (
    Chart(
        "requests",
        "Requests by provider",
        "per minute",
        (
            Line(
                _per_minute("image_gateway_requests_total", "provider"),
                "provider",
                Source(metrics.REQUESTS, "provider"),
            ),
        ),
    ),
    Chart(
        "errors",
        "Failed calls to providers",
        "per minute",
        (
            Line(
                _per_minute("image_gateway_upstream_calls_total", "provider", '{outcome!="ok"}'),
                "provider",
                Source(metrics.UPSTREAM_CALLS, "provider", skip=("outcome", "ok")),
            ),
        ),
    ),
    Chart(
        "latency",
        "p95 latency",
        "ms",
        (
            Line(
                _p95("image_gateway_upstream_call_duration_seconds", "provider"),
                "provider",
                Source(metrics.UPSTREAM_DURATION, "provider", scale=1000),
            ),
            Line(
                _p95("image_gateway_request_duration_seconds"),
                None,
                Source(metrics.REQUEST_DURATION, name="all requests", scale=1000),
            ),
        ),
    ),
    Chart(
        "images",
        "Images",
        "per minute",
        (
            Line(
                _per_minute("image_gateway_images_generated_total", "provider"),
                "provider",
                Source(metrics.IMAGES, "provider"),
            ),
        ),
    ),
    Chart(
        "cost",
        "Cost",
        "per minute, by currency",
        (Line(_per_minute("image_gateway_cost_total", "currency"), "currency", Source(metrics.COST, "currency")),),
    ),
    Chart(
        "energy",
        "Energy",
        "Wh per minute",
        (
            Line(
                f"sum by (provider) (rate(image_gateway_energy_kwh_total[{RATE}])) * 60000",
                "provider",
                Source(metrics.ENERGY, "provider", scale=1000),
            ),
        ),
    ),
    Chart(
        "queue",
        "Queue depth",
        "waiting",
        (
            Line("max(image_gateway_jobs_waiting)", None, Source(metrics.JOBS_WAITING, name="async jobs")),
            Line("sum(image_gateway_local_queue_depth)", None, Source(metrics.LOCAL_QUEUE_DEPTH, name="local backend")),
        ),
    ),
)


# --- the answer (the admin API's /admin/api/charts) ---


class ChartSeries(msgspec.Struct):
    name: str
    values: list[float | None]  # one per ``ChartsAnswer.times``; null: no point there


class ChartData(msgspec.Struct):
    id: str
    title: str
    unit: str
    series: list[ChartSeries]


class ChartsAnswer(msgspec.Struct):
    """The charts of the last hour. ``source``: ``prometheus`` (every replica it scrapes) or ``process`` (this
    process's own readings, one a minute, the last point the current minute so far); ``note`` says which in
    words, ``error`` why Prometheus was not used (null: it was, or none is configured)."""

    source: Literal["prometheus", "process"]
    note: str
    error: str | None
    window_s: float
    step_s: float
    times: list[float]  # epoch seconds
    charts: list[ChartData]


# --- Prometheus's HTTP API ---


class PrometheusError(Exception):
    """Prometheus could not be asked, or answered otherwise than its API says: a sentence for the page."""


class _Series(msgspec.Struct):
    metric: dict[str, str]
    values: list[tuple[float, str]]


class _Data(msgspec.Struct):
    resultType: str  # Prometheus's name
    result: list[_Series]


class _Answer(msgspec.Struct):
    status: str
    data: _Data | None = None
    error: str | None = None


class _Refusal(msgspec.Struct):
    error: str = ""


_answer = msgspec.json.Decoder(_Answer)
_refusal = msgspec.json.Decoder(_Refusal)


class Prometheus:
    """Range queries to one Prometheus server, from the gateway; ``shown`` is its URL without credentials."""

    def __init__(self, url: str, timeout_s: float) -> None:
        parts = urlsplit(url)
        login = (unquote(parts.username or ""), unquote(parts.password or ""))
        self.headers = {"Authorization": aiohttp.encode_basic_auth(*login)} if parts.username else {}
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        netloc += f":{parts.port}" if parts.port else ""
        self.base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self.shown = self.base
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def query_range(self, query: str, start: float, end: float, step: float) -> list[_Series]:
        if self._session is None:
            # No cookies, no proxies from the environment; the credentials are this session's alone.
            self._session = aiohttp.ClientSession(
                headers=self.headers, trust_env=False, cookie_jar=aiohttp.DummyCookieJar()
            )
        params = {"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        try:
            async with self._session.get(
                self.base + "/api/v1/query_range", params=params, allow_redirects=False
            ) as response:
                body = await _bounded(response)
                status = response.status
        except aiohttp.ClientError as exc:
            raise PrometheusError(f"Prometheus at {self.shown} could not be reached ({type(exc).__name__})") from None
        if status != 200:
            try:
                said = _refusal.decode(body).error
            except (msgspec.DecodeError, msgspec.ValidationError):
                said = ""
            raise PrometheusError(f"Prometheus at {self.shown} answered {status}" + (f": {said[:300]}" if said else ""))
        try:
            answer = _answer.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise PrometheusError(f"{self.shown} did not answer as Prometheus's HTTP API does") from None
        if answer.status != "success" or answer.data is None or answer.data.resultType != "matrix":
            raise PrometheusError(f"Prometheus at {self.shown} refused a query: {(answer.error or '')[:300]}")
        return answer.data.result

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _bounded(response: aiohttp.ClientResponse) -> bytes:
    """The body, or a ``PrometheusError`` once it passes ``MAX_ANSWER_BYTES``."""
    if (response.content_length or 0) > MAX_ANSWER_BYTES:
        raise PrometheusError(f"Prometheus's answer is over {MAX_ANSWER_BYTES} bytes")
    body = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            raise PrometheusError(f"Prometheus's answer is over {MAX_ANSWER_BYTES} bytes")
    return bytes(body)


def _number(text: str) -> float | None:
    value = float(text)
    return None if math.isnan(value) or math.isinf(value) else round(value, 6)


# --- the charts ---


CLOSE_S = 1.0  # at shutdown: how long the readings' task gets to end


class Charts:
    """Keeps this process's readings (a task: one a minute, and the job queue's depth every ``TICK_S``) and
    answers the charts, from Prometheus or from them."""

    def __init__(self, gateway: Gateway, console: ConsoleConfig) -> None:
        self.gateway = gateway
        self.history = MetricHistory([line.source for chart in CHARTS for line in chart.lines])
        self.prometheus = (
            Prometheus(console.prometheus_url, console.prometheus_timeout_s) if console.prometheus_url else None
        )
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._last: dict[str, Any] | None = None
        self._taken = -math.inf

    def start(self) -> Charts:
        """The first reading now (the charts' first point counts from here), then one a minute."""
        self.history.sample()
        self._task = asyncio.create_task(self._keep(), name="console-charts")
        return self

    async def aclose(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task, CLOSE_S)  # bounded, as every step of a shutdown
        if self.prometheus is not None:
            await self.prometheus.aclose()

    async def _keep(self) -> None:
        last = time.monotonic()
        while True:
            await self.read_jobs()
            await asyncio.sleep(TICK_S)
            if time.monotonic() - last >= STEP_S - TICK_S / 2:
                self.history.sample()
                last = time.monotonic()

    async def read_jobs(self) -> None:
        """``image_gateway_jobs_waiting``: the job queue's depth (every replica's with Redis), as read now."""
        jobs = self.gateway.jobs
        if jobs is None:
            return
        try:
            summary = await jobs.summary()
        except Exception as exc:  # a job store that does not answer: the gauge keeps its last value
            log.debug("jobs_unread", detail=type(exc).__name__)
            return
        if isinstance(summary.get("waiting"), int):
            metrics.JOBS_WAITING.set(summary["waiting"])

    async def answer(self) -> dict[str, Any]:
        """The charts, at most ``CACHE_S`` old."""
        async with self._lock:
            if self._last is None or time.monotonic() - self._taken >= CACHE_S:
                self._last = await self.take()
                self._taken = time.monotonic()
            return self._last

    async def take(self) -> dict[str, Any]:
        error = None
        if self.prometheus is not None:
            try:
                return await asyncio.wait_for(self.from_prometheus(self.prometheus), self.prometheus.timeout_s)
            except TimeoutError:
                error = f"Prometheus at {self.prometheus.shown} did not answer within {self.prometheus.timeout_s:g} s"
            except PrometheusError as exc:
                error = str(exc)
            log.warning("console_prometheus_failed", detail=error)
        return self.from_process(error)

    async def from_prometheus(self, prometheus: Prometheus) -> dict[str, Any]:
        end = round(time.time())
        start = end - WINDOW_S
        times = [start + step * STEP_S for step in range(int(WINDOW_S // STEP_S) + 1)]
        lines = [line for chart in CHARTS for line in chart.lines]
        results = await asyncio.gather(*(prometheus.query_range(line.promql, start, end, STEP_S) for line in lines))
        found = iter(results)
        charts = []
        for chart in CHARTS:
            series: dict[str, list[float | None]] = {}
            for line in chart.lines:
                for result in next(found):
                    name = result.metric.get(line.label, "") if line.label else line.source.name
                    values = series.setdefault(name or "(none)", [None] * len(times))
                    for at, text in result.values:
                        index = round((at - start) / STEP_S)
                        if 0 <= index < len(times):
                            values[index] = _number(text)
            charts.append(_chart(chart, series))
        note = f"From Prometheus at {prometheus.shown}: every replica it scrapes, the last hour, a point a minute."
        return _answer_of("prometheus", note, None, times, charts)

    def from_process(self, error: str | None) -> dict[str, Any]:
        times, by_source = self.history.series()
        found = iter(by_source)
        charts = []
        for chart in CHARTS:
            series: dict[str, list[float | None]] = {}
            for _ in chart.lines:
                series.update(next(found))
            charts.append(_chart(chart, series))
        started = self.history.started
        since = time.strftime("%H:%M:%S UTC", time.gmtime(started)) if started is not None else "now"
        why = "Prometheus failed" if self.prometheus is not None else "no console.prometheus_url"
        note = (
            f"This process's own recent window ({why}): a point a minute since {since}, at most an hour, "
            "the last point this minute so far. Other replicas and server workers are not in it."
        )
        return _answer_of("process", note, error, times, charts)


def _chart(chart: Chart, series: dict[str, list[float | None]]) -> dict[str, Any]:
    listed = [{"name": name, "values": values} for name, values in sorted(series.items())]
    return {"id": chart.id, "title": chart.title, "unit": chart.unit, "series": listed}


def _answer_of(
    source: str, note: str, error: str | None, times: list[float], charts: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "source": source,
        "note": note,
        "error": error,
        "window_s": WINDOW_S,
        "step_s": STEP_S,
        "times": [round(at, 3) for at in times],
        "charts": charts,
    }
