"""The status page's charts in a real browser (Debian's Chromium under Playwright): drawn by the vendored
uPlot from this process's own readings, and from a real Prometheus (Debian's ``prometheus``) scraping the
gateway; the local model's speed options beside them; no Content-Security-Policy violation.

With ``IMAGE_GATEWAY_SCREENSHOTS=<dir>`` the tests save the charts as PNG there (docs/images/ holds them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.console.conftest import ADMIN_KEY, CLIENT_KEY, ConsoleGateway, console_config
from tests.emulators import EmulatorServer
from tests.integration.gateway_server import GatewayServer
from tests.servers import free_port

PROMETHEUS = os.environ.get("IMAGE_GATEWAY_PROMETHEUS", "/usr/bin/prometheus")
SHOTS = os.environ.get("IMAGE_GATEWAY_SCREENSHOTS", "")
CHART_IDS = ["requests", "errors", "latency", "images", "cost", "energy", "queue"]


@pytest.fixture(autouse=True)
def _fresh(fresh_emulators: dict[str, EmulatorServer]) -> None:
    """No faults queued at the emulators."""


def generate(gateway: GatewayServer, model: str, times: int = 1) -> None:
    # The tiny model small and quick; the emulated provider at its own default size.
    body = {"size": "256x256", "steps": 2} if model == "tiny" else {}
    for _ in range(times):
        answered = httpx.post(
            gateway.url + "/v1/images/generations",
            headers={"Authorization": f"Bearer {CLIENT_KEY}"},
            json={"model": model, "prompt": "a lighthouse", **body},
            timeout=120,
        )
        assert answered.status_code == 200, answered.text


def open_status(page: Any, gateway: GatewayServer) -> list[str]:
    """Sign in on the status page; the page's Content-Security-Policy complaints, as they come."""
    refused: list[str] = []
    page.on(
        "console", lambda message: refused.append(message.text) if "Content Security Policy" in message.text else None
    )
    page.goto(f"{gateway.url}/console#status")
    page.get_by_label("Admin key").fill(ADMIN_KEY)
    page.get_by_role("button", name="Sign in").click()
    page.locator("#status").wait_for(state="visible")
    return refused


def drawn(page: Any) -> dict[str, dict[str, str]]:
    """Each chart drawn by uPlot (its canvas in the page) → the series its legend names → the value it shows."""
    for chart in CHART_IDS:
        page.locator(f'figure[data-chart="{chart}"]').wait_for()
    page.wait_for_function("() => document.querySelectorAll('figure.chart[data-drawn=true]').length >= 2")
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('figure.chart[data-drawn=true]')].map(f => [
            f.dataset.chart,
            Object.fromEntries([...f.querySelectorAll('.u-legend .u-series:not(:first-child)')].map(row => [
                row.querySelector('.u-label').textContent, row.querySelector('.u-value').textContent]))]))"""
    )


def shoot(page: Any, name: str) -> None:
    page.mouse.move(2, 2)  # nowhere over a chart
    if SHOTS:
        page.locator("#charts-box").screenshot(path=str(Path(SHOTS) / name))


def test_charts_of_this_process_and_the_models_speed_options(page: Any, console_gateway: GatewayServer) -> None:
    generate(console_gateway, "tiny", 2)
    generate(console_gateway, "via-melious", 3)
    refused = open_status(page, console_gateway)
    charts = page.locator("#charts")
    page.locator('#charts[data-source="process"]').wait_for()
    assert "This process's own recent window (no console.prometheus_url)" in page.locator("#charts-note").inner_text()
    assert page.locator("#charts-error").is_hidden()
    legends = drawn(page)
    assert set(legends["requests"]) >= {"local", "melious"}
    assert legends["requests"]["melious"] == "3" and legends["requests"]["local"] == "2"  # the latest point shown
    assert set(legends["images"]) >= {"local", "melious"}
    assert set(legends["latency"]) >= {"local", "melious", "all requests"}
    assert "EUR" in legends["cost"]  # tiny is priced in EUR (melious is not)
    assert charts.locator('figure[data-chart="requests"] canvas').count() == 1
    label = charts.locator('figure[data-chart="requests"] .plot').get_attribute("aria-label") or ""
    assert label.startswith("Requests by provider (per minute), latest:") and "melious 3" in label

    # The pointer over a chart shows the point under it; once it leaves, the latest again.
    box = charts.locator('figure[data-chart="requests"] .u-over').bounding_box()
    page.mouse.move(box["x"] + 5, box["y"] + box["height"] / 2)
    page.mouse.move(2, 2)
    assert drawn(page)["requests"]["melious"] == "3"

    # The local backend's model, and what it runs with, asked through the adapter protocol.
    options = page.locator('#local .local-card[data-provider="local"] [data-fact="options-tiny"] dd')
    options.wait_for()
    assert options.inner_text() == "float32 · no step cache · eager"
    assert refused == []  # uPlot drew under the page's Content-Security-Policy
    shoot(page, "console-charts-process.png")


def test_charts_fit_a_phone(chromium: Any, console_gateway: GatewayServer) -> None:
    context = chromium.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        page = context.new_page()
        page.set_default_timeout(60_000)
        open_status(page, console_gateway)
        drawn(page)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        widths = page.evaluate("[...document.querySelectorAll('figure.chart canvas')].map(c => c.clientWidth)")
        assert widths and all(0 < width <= 370 for width in widths)
    finally:
        context.close()


# --- a real Prometheus scraping the gateway ---


class PrometheusServer:
    """Debian's Prometheus on a loopback port, scraping ``targets`` every second with the admin key."""

    def __init__(self, home: Path, port: int) -> None:
        if not os.access(PROMETHEUS, os.X_OK):
            pytest.fail(
                f"the console's chart tests need Prometheus at {PROMETHEUS}: `apt-get install prometheus` "
                "(make install does it when run as root), or set IMAGE_GATEWAY_PROMETHEUS",
                pytrace=False,
            )
        self.home, self.port = home, port
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, target: str) -> PrometheusServer:
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": "image-gateway",
                    "authorization": {"credentials": ADMIN_KEY},  # /metrics wants an admin key here
                    "static_configs": [{"targets": [target]}],
                }
            ],
        }
        (self.home / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (self.home / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={self.home / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.home / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.wait(lambda: httpx.get(self.url + "/-/ready", timeout=1).status_code == 200, "ready")
        return self

    def wait(self, done: Any, what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, (self.home / "prometheus.log").read_text()
            with contextlib.suppress(httpx.HTTPError):  # not listening yet: look again
                if done():
                    return
            time.sleep(0.2)
        raise AssertionError(f"Prometheus was not {what} in {timeout} s: {(self.home / 'prometheus.log').read_text()}")

    def query(self, promql: str) -> list[Any]:
        answer = httpx.get(self.url + "/api/v1/query", params={"query": promql}, timeout=5).json()
        return list(answer["data"]["result"])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def watched(
    emulators: dict[str, EmulatorServer], model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayServer, PrometheusServer]]:
    """A gateway whose console reads a real Prometheus, which scrapes that gateway."""
    home = tmp_path_factory.mktemp("prometheus")
    prometheus = PrometheusServer(home, free_port())
    console = {"prometheus_url": prometheus.url}
    gateway = ConsoleGateway(console_config(emulators, tmp_path_factory.mktemp("store"), console=console)).start()
    try:
        prometheus.start(gateway.url.removeprefix("http://"))
        yield gateway, prometheus
    finally:
        prometheus.stop()
        gateway.stop()
        shutil.rmtree(home / "data", ignore_errors=True)


def test_charts_from_a_real_prometheus(page: Any, watched: tuple[GatewayServer, PrometheusServer]) -> None:
    gateway, prometheus = watched
    prometheus.wait(lambda: prometheus.query('up{job="image-gateway"} == 1'), "scraping the gateway")
    # A counter's first scrape only starts its series: traffic on both sides of a scrape makes a rate.
    for _ in range(2):
        generate(gateway, "tiny")
        generate(gateway, "via-melious", 2)
        time.sleep(2.5)  # scraped every second
    if SHOTS:  # for the docs' picture: a few minutes of traffic at changing rates, a line rather than a dot
        for minute in range(4):
            generate(gateway, "tiny", 1 + minute % 2)
            generate(gateway, "via-melious", (3, 6, 2, 5)[minute])
            time.sleep(45)
    prometheus.wait(lambda: prometheus.query("sum(rate(image_gateway_requests_total[2m])) > 0"), "counting requests")

    answered = httpx.get(
        gateway.url + "/admin/api/charts", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
    )
    answer = answered.json()
    assert answer["source"] == "prometheus", answer["error"]
    assert answer["note"].startswith(f"From Prometheus at {prometheus.url}:")
    requests = {s["name"]: s["values"] for s in next(c for c in answer["charts"] if c["id"] == "requests")["series"]}
    assert requests["melious"][-1] > 0 and requests["local"][-1] > 0  # per minute, as Prometheus rated them

    refused = open_status(page, gateway)
    page.locator('#charts[data-source="prometheus"]').wait_for()
    assert page.locator("#charts-note").inner_text().startswith(f"From Prometheus at {prometheus.url}:")
    legends = drawn(page)
    assert set(legends["requests"]) >= {"local", "melious"}
    assert float(legends["requests"]["melious"]) > 0  # the latest point, in the legend
    assert set(legends["latency"]) >= {"local", "melious", "all requests"}
    assert set(legends["queue"]) >= {"async jobs"}
    assert refused == []
    shoot(page, "console-charts-prometheus.png")
