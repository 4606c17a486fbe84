"""`image-gateway serve` as a real process: several workers with pooled metrics, and graceful shutdown."""

from __future__ import annotations

import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.emulators import EmulatorServer, Fault
from tests.redis_support import require_shared_redis
from tests.servers import GatewayProcess


def requests_total(text: str) -> float:
    for family in text_string_to_metric_families(text):
        if family.name == "image_gateway_requests":
            return sum(sample.value for sample in family.samples if sample.name.endswith("_total"))
    return 0.0


def write_config(
    tmp_path: Path, emulators: dict[str, EmulatorServer], redis: dict[str, Any] | None = None, **server: Any
) -> Path:
    config = {
        "server": server,
        **({"redis": redis} if redis else {}),
        "image_store": {"path": str(tmp_path / "store"), "secret": "shared-by-workers"},
        "providers": {"mel": {"kind": "melious", "base_url": emulators["melious"].base_url, "api_key": "test-key"}},
        "models": [{"name": "flux-schnell", "targets": [{"provider": "mel", "model": "flux-schnell"}]}],
    }
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(yaml.safe_dump(config))
    return config_file


def _workers_that_served(metrics_dir: Path) -> int:
    """How many server processes have counted a request in their own metrics file."""
    return sum(b"image_gateway_requests_total" in path.read_bytes() for path in metrics_dir.glob("counter_*.db"))


def test_two_workers_pool_their_metrics(emulators: dict[str, EmulatorServer], tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    # Several processes share one job store (Redis): `serve --workers 2` refuses the in-process one.
    redis = {"url": require_shared_redis(), "key_prefix": f"igw-test-{uuid.uuid4().hex}:"}
    gateway = GatewayProcess(
        write_config(tmp_path, emulators, redis), "--workers", "2", env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    )
    try:
        gateway.wait_ready("/health")
        sent = 0
        # Fresh connections until both workers have answered some (each writes its own counter file).
        # (A worker writes its counter file at start: some series exist at 0 from the start.)
        while _workers_that_served(metrics_dir) < 2 and sent < 200:
            body = {"prompt": "p", "size": "512x512"}
            response = httpx.post(gateway.url + "/melious/v1/images/generations", json=body)
            assert response.status_code == 200, response.text
            sent += 1
        assert _workers_that_served(metrics_dir) == 2, "the requests did not reach both workers"
        assert sent >= 2
        for _ in range(4):  # whichever worker answers the scrape, it reports every worker's requests
            assert requests_total(httpx.get(gateway.url + "/metrics").text) == sent
    finally:
        gateway.stop()


def test_sigterm_finishes_requests_in_flight(emulators: dict[str, EmulatorServer], tmp_path: Path) -> None:
    """Graceful shutdown: on SIGTERM the server stops taking requests and finishes those in flight."""
    gateway = GatewayProcess(write_config(tmp_path, emulators, shutdown_grace_s=10))
    try:
        gateway.wait_ready("/health")
        emulators["melious"].emulator.add_fault(Fault(delay=1.5, times=1))
        with ThreadPoolExecutor(max_workers=1) as pool:
            body = {"prompt": "p", "size": "512x512"}
            slow = pool.submit(httpx.post, gateway.url + "/melious/v1/images/generations", json=body, timeout=30)
            while not emulators["melious"].emulator.calls:  # the request is in flight upstream
                time.sleep(0.02)
            gateway.process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            with pytest.raises(httpx.ConnectError):  # no longer taking requests
                httpx.get(gateway.url + "/health", timeout=2)
            assert slow.result().status_code == 200  # the one in flight finished
        assert gateway.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once done
    finally:
        gateway.stop()
