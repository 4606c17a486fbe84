"""`image-gateway serve` as a real process: several workers with pooled metrics, and graceful shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.emulators import EmulatorServer, Fault
from tests.redis_support import free_port


def requests_total(text: str) -> float:
    for family in text_string_to_metric_families(text):
        if family.name == "image_gateway_requests":
            return sum(sample.value for sample in family.samples if sample.name.endswith("_total"))
    return 0.0


def test_two_workers_pool_their_metrics(emulators: dict[str, EmulatorServer], tmp_path: Path) -> None:
    config = {
        "image_store": {"path": str(tmp_path / "store"), "secret": "shared-by-workers"},
        "providers": {"mel": {"kind": "melious", "base_url": emulators["melious"].base_url, "api_key": "test-key"}},
        "models": [{"name": "flux-schnell", "targets": [{"provider": "mel", "model": "flux-schnell"}]}],
    }
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    command = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config_file), "--port", str(port)]
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    process = subprocess.Popen([*command, "--workers", "2"], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the gateway with 2 workers did not start"
            time.sleep(0.2)
        sent = 0
        # Fresh connections until both workers have answered some (each writes its own counter file).
        while len(set(metrics_dir.glob("counter_*.db"))) < 2 and sent < 200:
            response = httpx.post(url + "/melious/v1/images/generations", json={"prompt": "p", "size": "512x512"})
            assert response.status_code == 200, response.text
            sent += 1
        assert len(set(metrics_dir.glob("counter_*.db"))) == 2, "the requests did not reach both workers"
        assert sent >= 2
        for _ in range(4):  # whichever worker answers the scrape, it reports every worker's requests
            assert requests_total(httpx.get(url + "/metrics").text) == sent
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


def test_sigterm_finishes_requests_in_flight(emulators: dict[str, EmulatorServer], tmp_path: Path) -> None:
    """Graceful shutdown: on SIGTERM the server stops taking requests and finishes those in flight."""
    config = {
        "server": {"shutdown_grace_s": 10},
        "image_store": {"path": str(tmp_path / "store")},
        "providers": {"mel": {"kind": "melious", "base_url": emulators["melious"].base_url, "api_key": "test-key"}},
        "models": [{"name": "flux-schnell", "targets": [{"provider": "mel", "model": "flux-schnell"}]}],
    }
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (tmp_path / "serve.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config_file), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.2)
        emulators["melious"].emulator.add_fault(Fault(delay=1.5, times=1))
        with ThreadPoolExecutor(max_workers=1) as pool:
            slow = pool.submit(
                httpx.post, url + "/melious/v1/images/generations", json={"prompt": "p", "size": "512x512"}, timeout=30
            )
            while not emulators["melious"].emulator.calls:  # the request is in flight upstream
                time.sleep(0.02)
            process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            with pytest.raises(httpx.ConnectError):  # no longer taking requests
                httpx.get(url + "/health", timeout=2)
            assert slow.result().status_code == 200  # the one in flight finished
        assert process.wait(timeout=15) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once done
    finally:
        if process.poll() is None:
            process.kill()
