"""A job survives its replica: two real gateway processes on one real Redis, the one running it SIGKILLed."""

from __future__ import annotations

import re
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from gateway.admission.auth import hash_key
from tests.emulators import EmulatorServer, Fault
from tests.redis_support import require_shared_redis
from tests.servers import GatewayProcess

KEY = "sk-replica-jobs-0123456789"
HEADERS = {"Authorization": f"Bearer {KEY}"}
CLAIM_AFTER_S = 1


@pytest.fixture
def config_file(emulators: dict[str, EmulatorServer], tmp_path: Path) -> Iterator[Path]:
    prefix = f"igw-jobs-replicas-{uuid.uuid4().hex[:8]}:"
    config: dict[str, Any] = {
        "redis": {"url": require_shared_redis(), "key_prefix": prefix},
        "jobs": {"claim_after_s": CLAIM_AFTER_S, "consumers": 2},
        "auth": {"keys": [{"name": "alice", "hash": hash_key(KEY)}]},
        "image_store": {"path": str(tmp_path / "store")},  # one store, as replicas share a volume
        "providers": {"melious": {"kind": "melious", "base_url": emulators["melious"].base_url, "api_key": "test-key"}},
        "models": [{"name": "flux-schnell", "targets": [{"provider": "melious", "model": "flux-schnell"}]}],
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    yield path
    shared = redis.Redis.from_url(require_shared_redis())
    for key in shared.scan_iter(f"{prefix}*"):
        shared.delete(key)


def job(http: httpx.Client, base: str, job_id: str) -> dict[str, Any]:
    answer = http.get(f"{base}/v1/jobs/{job_id}", headers=HEADERS)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def wait_for(check: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.1)


def test_a_killed_replicas_job_is_finished_by_another(
    config_file: Path, fresh_emulators: dict[str, EmulatorServer], http: httpx.Client
) -> None:
    melious = fresh_emulators["melious"].emulator
    melious.add_fault(Fault(delay=60))  # the first call hangs: the replica dies inside it
    first = GatewayProcess(config_file).wait_ready()
    second: GatewayProcess | None = None
    try:
        submitted = http.post(
            first.url + "/v1/images/generations",
            json={"model": "flux-schnell", "prompt": "a slow one", "size": "512x512"},
            headers={**HEADERS, "Prefer": "respond-async"},
        )
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        # Only the first replica is up: it is the one running the job.
        wait_for(lambda: job(http, first.url, job_id)["status"] == "running", "the job runs")
        wait_for(lambda: len(melious.calls) == 1, "the upstream call is made")
        second = GatewayProcess(config_file).wait_ready()
        assert job(http, second.url, job_id)["status"] == "running"  # any replica answers GET

        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=10)

        done = wait_for(
            lambda: (body := job(http, second.url, job_id))["status"] in ("succeeded", "failed") and body,
            "the survivor finishes the job",
        )
        assert done["status"] == "succeeded", done
        image = http.get(done["result"]["data"][0]["url"])
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert len(melious.calls) == 2  # the killed call, then the survivor's
        exposition = http.get(second.url + "/metrics").text
        claims = re.search(r'^image_gateway_job_claims_total\{dialect="openai"\} (\S+)$', exposition, re.M)
        assert claims is not None and float(claims.group(1)) == 1.0
        assert '"job_claimed"' in second.log.read_text()
    finally:
        if first.process.poll() is None:
            first.stop()
        if second is not None:
            second.stop()
