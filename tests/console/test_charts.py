"""The status page's charts (gateway/console/charts.py): this process's own readings, Prometheus's HTTP API
asked by the gateway (a real HTTP server speaking its format here; the real Prometheus in
test_charts_browser.py), and what happens when it fails, is slow or answers too much."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.admission.auth import hash_key
from gateway.config import ConfigError, ConsoleConfig, parse_config
from gateway.console import charts as charts_module
from gateway.console.charts import CHARTS, MAX_ANSWER_BYTES, Charts
from gateway.observability.history import MetricHistory, Source, quantile
from gateway.observability.logs import config_secrets
from tests.conftest import API_KEY
from tests.console.conftest import ADMIN_KEY
from tests.emulators import EmulatorServer
from tests.integration.gateway_server import GatewayServer, gateway_config
from tests.servers import ThreadedServer, free_port

PROM_USER, PROM_SECRET = "grafana", "prometheus-secret-for-tests"

# --- this process's own readings ---


def test_a_counter_is_charted_as_what_it_gained_each_minute() -> None:
    registry = CollectorRegistry()
    calls = Counter("calls", "calls", ["provider", "outcome"], registry=registry)
    history = MetricHistory([Source(calls, "provider"), Source(calls, "provider", skip=("outcome", "ok"))], samples=3)
    history.sample(now=1000.0)
    calls.labels("melious", "ok").inc(3)
    calls.labels("melious", "timeout").inc()
    history.sample(now=1060.0)
    calls.labels("local", "ok").inc(2)
    times, (every, failed) = history.series(now=1090.0)
    assert times == [1060.0, 1090.0]  # each reading but the first, then now (this minute so far)
    assert every == {"local": [0.0, 2.0], "melious": [4.0, 0.0]}
    assert failed == {"melious": [1.0, 0.0]}


def test_the_ring_keeps_an_hour_and_no_more() -> None:
    registry = CollectorRegistry()
    waiting = Gauge("waiting", "waiting", registry=registry)
    history = MetricHistory([Source(waiting, name="jobs")], samples=60)
    for minute in range(200):
        waiting.set(minute)
        history.sample(now=minute * 60.0)
    waiting.set(7)
    times, (series,) = history.series(now=200 * 60.0)
    assert len(times) == 61 and times[0] == 140 * 60.0  # 61 readings kept: 60 minutes and now
    assert series["jobs"][:2] == [140.0, 141.0] and series["jobs"][-1] == 7.0  # a gauge: its value then
    assert history.started == 139 * 60.0


def test_p95_from_histogram_buckets_as_prometheus_computes_it() -> None:
    # 100 observations: 90 under 0.1 s, 10 between 0.1 s and 1 s. Prometheus: 0.1 + 0.9 * (95 - 90) / 10.
    assert quantile(0.95, {0.1: 90, 1.0: 100, math.inf: 100}) == pytest.approx(0.55)
    assert quantile(0.95, {0.1: 0, 1.0: 0, math.inf: 0}) is None
    assert quantile(0.5, {0.1: 10, math.inf: 20}) == 0.1  # in the +Inf bucket: the highest finite bound
    registry = CollectorRegistry()
    latency = Histogram("latency", "latency", ["provider"], buckets=(0.1, 1.0), registry=registry)
    history = MetricHistory([Source(latency, "provider", scale=1000)])
    for _ in range(50):
        latency.labels("slow").observe(5.0)  # before the first reading: not in the chart
    history.sample(now=0.0)
    for _ in range(90):
        latency.labels("p").observe(0.05)
    for _ in range(10):
        latency.labels("p").observe(0.5)
    _, (series,) = history.series(now=60.0)
    assert series["p"] == [pytest.approx(550.0)] and series["slow"] == [None]  # ms; no calls this minute


# --- the config ---


def test_console_prometheus_url_is_checked_and_named() -> None:
    text = "models: []\nconsole:\n  prometheus_url: {url}\n"
    assert parse_config(text.format(url="http://prometheus:9090/")).console.prometheus_url == "http://prometheus:9090"
    assert parse_config("models: []\n").console.prometheus_url == ""
    for bad in ("prometheus:9090", "ftp://prometheus", "http://", "http://p:99999", "http://p/?x=1", "http://p#f"):
        with pytest.raises(ConfigError) as caught:
            parse_config(text.format(url=bad))
        assert "at `$.console.prometheus_url`" in str(caught.value), str(caught.value)
        assert "prometheus_url" in str(caught.value).split(" - at ")[0]
    with pytest.raises(ConfigError, match=r"at `\$\.console\.prometheus_timeout_s`"):
        parse_config("models: []\nconsole:\n  prometheus_timeout_s: 0\n")
    with pytest.raises(ConfigError, match=r"unknown field `grafana_url` - at `\$\.console`"):
        parse_config("models: []\nconsole:\n  grafana_url: http://g\n")


# --- Prometheus's HTTP API, from a real HTTP server that speaks it ---


class FakePrometheus:
    """An ASGI app answering ``/prefix/api/v1/query_range`` as Prometheus does; ``mode`` picks a failure."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.seen: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        headers = {name.decode(): value.decode() for name, value in scope["headers"]}
        params = {name: values[0] for name, values in parse_qs(scope["query_string"].decode()).items()}
        self.seen.append({"path": scope["path"], "headers": headers, "params": params})
        status, body = self.answer(scope["path"], params)
        if self.mode == "slow":
            await asyncio.sleep(3)
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
        )
        await send({"type": "http.response.body", "body": body})

    def answer(self, path: str, params: dict[str, str]) -> tuple[int, bytes]:
        if self.mode == "error":
            return 400, json.dumps({"status": "error", "errorType": "bad_data", "error": "parse error"}).encode()
        if self.mode == "garbage":
            return 200, b"<html>a login page</html>"
        if self.mode == "huge":
            return (
                200,
                b'{"status":"success","data":{"resultType":"matrix","result":[' + b" " * MAX_ANSWER_BYTES + b"]}}",
            )
        assert path == "/prefix/api/v1/query_range"
        start, step = float(params["start"]), float(params["step"])
        query = params["query"]
        at = [start + 59 * step, start + 60 * step]  # the last two points of the hour
        if "provider)" in query:
            result = [
                {"metric": {"provider": "melious"}, "values": [[at[0], "1.5"], [at[1], "NaN"]]},
                {"metric": {"provider": "local"}, "values": [[at[1], "2"]]},
            ]
        elif "by (currency)" in query:
            result = [{"metric": {"currency": "EUR"}, "values": [[at[1], "0.25"]]}]
        else:
            result = [{"metric": {}, "values": [[at[1], "3"]]}]
        return 200, json.dumps({"status": "success", "data": {"resultType": "matrix", "result": result}}).encode()


@pytest.fixture(scope="module")
def prometheus() -> Iterator[tuple[FakePrometheus, ThreadedServer]]:
    fake = FakePrometheus()
    with ThreadedServer(fake) as server:
        yield fake, server


@pytest.fixture
def fake(prometheus: tuple[FakePrometheus, ThreadedServer]) -> FakePrometheus:
    prometheus[0].mode = "ok"
    prometheus[0].seen.clear()
    return prometheus[0]


def prometheus_url(server: ThreadedServer, credentials: bool = True) -> str:
    userinfo = f"{PROM_USER}:{PROM_SECRET}@" if credentials else ""
    return f"http://{userinfo}127.0.0.1:{server.port}/prefix/"


def keeper(url: str, timeout_s: float = 5.0) -> Charts:
    """The charts' keeper, its first reading taken (as ``start`` does), without the task."""
    console = ConsoleConfig(prometheus_url=url, prometheus_timeout_s=timeout_s)
    charts = Charts(SimpleNamespace(jobs=None), console)  # type: ignore[arg-type]
    charts.history.sample()
    return charts


async def test_the_charts_come_from_prometheus_range_queries(
    prometheus: tuple[FakePrometheus, ThreadedServer], fake: FakePrometheus
) -> None:
    charts = keeper(prometheus_url(prometheus[1]))
    try:
        answer = await charts.take()
    finally:
        await charts.aclose()
    assert answer["source"] == "prometheus" and answer["error"] is None
    assert answer["note"].startswith(f"From Prometheus at http://127.0.0.1:{prometheus[1].port}/prefix:")
    times = answer["times"]
    assert len(times) == 61 and times[1] - times[0] == 60 and abs(times[-1] - time.time()) < 5
    by_id = {chart["id"]: chart for chart in answer["charts"]}
    assert list(by_id) == [chart.id for chart in CHARTS]
    requests = {series["name"]: series["values"] for series in by_id["requests"]["series"]}
    assert requests["melious"][-2:] == [1.5, None]  # NaN (no data) is no point
    assert requests["local"][-1] == 2.0 and requests["local"][:-1] == [None] * 60
    assert {s["name"] for s in by_id["latency"]["series"]} == {"melious", "local", "all requests"}
    assert {s["name"] for s in by_id["queue"]["series"]} == {"async jobs", "local backend"}
    assert [s["name"] for s in by_id["cost"]["series"]] == ["EUR"]
    # One range query per line, a point a minute over the hour, every one with the URL's credentials as basic auth.
    lines = [line for chart in CHARTS for line in chart.lines]
    assert sorted(seen["params"]["query"] for seen in fake.seen) == sorted(line.promql for line in lines)
    expected = "Basic " + base64.b64encode(f"{PROM_USER}:{PROM_SECRET}".encode()).decode()
    for seen in fake.seen:
        assert seen["params"]["step"] == "60"
        assert float(seen["params"]["end"]) - float(seen["params"]["start"]) == 3600
        assert seen["headers"]["authorization"] == expected
    assert PROM_SECRET not in json.dumps(answer)


@pytest.mark.parametrize(
    ("mode", "said"),
    [
        ("error", "answered 400: parse error"),
        ("garbage", "did not answer as Prometheus's HTTP API does"),
        ("huge", f"answer is over {MAX_ANSWER_BYTES} bytes"),
        ("slow", "did not answer within 0.5 s"),
        ("down", "could not be reached (ClientConnectorError)"),
    ],
)
async def test_a_failing_prometheus_is_said_and_this_process_is_shown(
    prometheus: tuple[FakePrometheus, ThreadedServer], fake: FakePrometheus, mode: str, said: str
) -> None:
    fake.mode = mode
    url = (
        f"http://{PROM_USER}:{PROM_SECRET}@127.0.0.1:{free_port()}" if mode == "down" else prometheus_url(prometheus[1])
    )
    charts = keeper(url, timeout_s=0.5)
    started = time.monotonic()
    try:
        answer = await charts.take()
    finally:
        await charts.aclose()
    assert time.monotonic() - started < 2.5  # bounded by console.prometheus_timeout_s, whatever the server does
    assert answer["source"] == "process"
    assert said in answer["error"] and answer["error"].startswith(("Prometheus", "http://"))
    assert "This process's own recent window (Prometheus failed)" in answer["note"]
    assert PROM_SECRET not in json.dumps(answer) and PROM_USER not in answer["error"]
    assert len(answer["times"]) >= 1 and len(answer["charts"]) == len(CHARTS)


async def test_an_answer_serves_every_page_for_a_while(
    prometheus: tuple[FakePrometheus, ThreadedServer], fake: FakePrometheus
) -> None:
    charts = keeper(prometheus_url(prometheus[1]))
    try:
        first, second = await asyncio.gather(charts.answer(), charts.answer())
    finally:
        await charts.aclose()
    assert first is second
    assert len(fake.seen) == sum(len(chart.lines) for chart in CHARTS)  # one round of queries for both pages


# --- through a running gateway ---


@pytest.fixture(scope="module")
def light_gateway_config(emulators: dict[str, EmulatorServer], tmp_path_factory: pytest.TempPathFactory) -> Any:
    def build(**console: Any) -> Any:
        providers = {"melious": {"kind": "melious", "base_url": emulators["melious"].base_url, "api_key": API_KEY}}
        models = [{"name": "via-melious", "targets": [{"provider": "melious", "model": "flux-schnell"}]}]
        auth = {"admin_keys": [{"name": "ops", "hash": hash_key(ADMIN_KEY)}]}
        return gateway_config(providers, models, tmp_path_factory.mktemp("store"), auth=auth, console=console)

    return build


def admin(gateway: GatewayServer, path: str) -> httpx.Response:
    return httpx.get(gateway.url + path, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)


def test_without_prometheus_the_gateway_charts_its_own_requests(
    light_gateway_config: Any, fresh_emulators: dict[str, EmulatorServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(charts_module, "CACHE_S", 0.0)  # every answer fresh (the gateway runs in this process)
    with GatewayServer(light_gateway_config()) as gateway:
        assert httpx.get(gateway.url + "/admin/api/charts").status_code == 401  # the admin API's key, as every route
        for _ in range(3):
            answered = httpx.post(gateway.url + "/v1/images/generations", json={"model": "via-melious", "prompt": "a"})
            assert answered.status_code == 200, answered.text
        answer = admin(gateway, "/admin/api/charts").json()
        metrics_text = admin(gateway, "/metrics").text
    assert answer["source"] == "process" and answer["error"] is None
    assert "This process's own recent window (no console.prometheus_url)" in answer["note"]
    assert len(answer["times"]) == 1  # a fresh process: its first minute, so far
    charted = {chart["id"]: {s["name"]: s["values"] for s in chart["series"]} for chart in answer["charts"]}
    assert charted["requests"]["melious"] == [3.0] and charted["images"]["melious"] == [3.0]
    assert charted["errors"].get("melious", [0.0]) == [0.0]
    assert charted["latency"]["melious"][0] > 0 and charted["latency"]["all requests"][0] > 0
    assert charted["queue"]["async jobs"] == [0.0]
    assert "image_gateway_jobs_waiting 0.0" in metrics_text  # the job queue's depth, read by the console's keeper


def test_the_gateway_asks_prometheus_and_never_hands_it_the_admin_key(
    light_gateway_config: Any, prometheus: tuple[FakePrometheus, ThreadedServer], fake: FakePrometheus
) -> None:
    with GatewayServer(light_gateway_config(prometheus_url=prometheus_url(prometheus[1]))) as gateway:
        answered = admin(gateway, "/admin/api/charts")
    assert answered.status_code == 200, answered.text
    answer = answered.json()
    assert answer["source"] == "prometheus" and answer["error"] is None
    assert fake.seen and PROM_SECRET not in answered.text
    for seen in fake.seen:
        assert ADMIN_KEY not in json.dumps(seen["headers"])  # the browser's key stays with the admin API
        assert seen["headers"]["authorization"].startswith("Basic ")


def test_a_password_in_prometheus_url_is_kept_out_of_the_logs() -> None:
    config = parse_config(f"models: []\nconsole:\n  prometheus_url: http://{PROM_USER}:{PROM_SECRET}@prometheus:9090\n")
    assert PROM_SECRET in config_secrets(config)  # every log line is scrubbed of it
