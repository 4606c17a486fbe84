"""Durable shared state: the gateway refuses a Redis that evicts, and several processes without a shared job store.

Real processes (``image-gateway serve``) and a real redis-server started here on its own port with
``--maxmemory-policy allkeys-lru``: the gateway exits at start naming the policy and the setting that
downgrades it; with ``redis.evicting_policy: warn`` it serves and says so in its log. ``serve --workers 2``
with no ``redis.url`` exits 1 naming what would be lost and what to do.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.emulators import EmulatorServer
from tests.redis_support import OwnRedis
from tests.servers import GatewayProcess


@pytest.fixture
def evicting_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path, extra_args=["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"]).start()
    try:
        yield server
    finally:
        server.stop()


def write_config(tmp_path: Path, emulators: dict[str, EmulatorServer], **sections: Any) -> Path:
    config = {
        "image_store": {"path": str(tmp_path / "store"), "secret": "shared-by-workers"},
        "providers": {"mel": {"kind": "melious", "base_url": emulators["melious"].base_url, "api_key": "test-key"}},
        "models": [{"name": "flux-schnell", "targets": [{"provider": "mel", "model": "flux-schnell"}]}],
        **sections,
    }
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(yaml.safe_dump(config))
    return config_file


def exit_status(gateway: GatewayProcess) -> int:
    """The status of a process that should end by itself (stopped, and failed on, if it does not within 60 s)."""
    try:
        return gateway.process.wait(timeout=60)
    finally:
        gateway.stop()


def test_an_evicting_redis_is_refused_at_start_naming_the_policy_and_the_setting(
    emulators: dict[str, EmulatorServer], evicting_redis: OwnRedis, tmp_path: Path
) -> None:
    gateway = GatewayProcess(write_config(tmp_path, emulators, redis={"url": evicting_redis.url}))
    assert exit_status(gateway) != 0
    log = gateway.log.read_text()
    assert "redis_evicting" in log and "allkeys-lru" in log
    assert "redis.evicting_policy" in log and "noeviction" in log


def test_several_processes_refuse_an_evicting_redis_before_they_start(
    emulators: dict[str, EmulatorServer], evicting_redis: OwnRedis, tmp_path: Path
) -> None:
    gateway = GatewayProcess(write_config(tmp_path, emulators, redis={"url": evicting_redis.url}), "--workers", "2")
    assert exit_status(gateway) == 1
    log = gateway.log.read_text()
    assert "config error:" in log and "allkeys-lru" in log and "redis.evicting_policy" in log
    assert "Child process" not in log, "refused before any server process started"


def test_an_evicting_redis_with_the_warn_setting_serves_and_logs_it(
    emulators: dict[str, EmulatorServer], evicting_redis: OwnRedis, tmp_path: Path
) -> None:
    config = write_config(tmp_path, emulators, redis={"url": evicting_redis.url, "evicting_policy": "warn"})
    gateway = GatewayProcess(config)
    try:
        gateway.wait_ready()
        answer = httpx.post(gateway.url + "/melious/v1/images/generations", json={"prompt": "p", "size": "512x512"})
        assert answer.status_code == 200, answer.text
    finally:
        gateway.stop()
    log = gateway.log.read_text()
    assert "redis_evicting" in log and "allkeys-lru" in log and "redis.evicting_policy: warn" in log


def test_a_noeviction_redis_starts_without_a_word_about_eviction(
    emulators: dict[str, EmulatorServer], tmp_path: Path
) -> None:
    own = OwnRedis(tmp_path, extra_args=["--maxmemory-policy", "noeviction"]).start()
    try:
        gateway = GatewayProcess(write_config(tmp_path, emulators, redis={"url": own.url}))
        try:
            gateway.wait_ready()
        finally:
            gateway.stop()
    finally:
        own.stop()
    assert "redis_evicting" not in gateway.log.read_text()


def test_several_processes_with_the_in_process_job_store_are_refused(
    emulators: dict[str, EmulatorServer], tmp_path: Path
) -> None:
    gateway = GatewayProcess(write_config(tmp_path, emulators), "--workers", "2")
    assert exit_status(gateway) == 1
    log = gateway.log.read_text()
    assert "--workers 2" in log and "redis.url" in log and "404" in log and "--workers 1" in log
