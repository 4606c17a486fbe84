"""Queued jobs hold their whole request (images included): the bytes they hold are bounded, in all and per key.

Async edits of large images over real HTTP, until refused: past its key's share a submit is a 429
(``rate_limited``), past the whole bound a 503 (``overloaded``), both with Retry-After; the payloads
kept in the real Redis stay under the bound; once jobs end their bytes are given back and submits
are accepted again. On both stores (Redis under a key prefix of its own, and the process).
"""

from __future__ import annotations

import os
import struct
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from gateway.admission.auth import hash_key
from gateway.config import ConfigError
from tests.emulators import EmulatorServer, Fault
from tests.gateway.fakes import config
from tests.integration.conftest import start_gateway
from tests.integration.gateway_server import GatewayServer
from tests.redis_support import require_shared_redis

KEYS = {"alice": "sk-alice-jobbytes-0123456789", "bob": "sk-bob-jobbytes-0123456789"}
MODELS = [{"name": "kontext", "targets": [{"provider": "nebul", "model": "black-forest-labs/FLUX.1-Kontext-dev"}]}]
EDITS = "/nebul/v1/images/edits"
MiB = 1024 * 1024
MAX_BYTES = 2 * MiB
MAX_BYTES_PER_KEY = 5 * MiB // 4


def large_png(width: int, height: int) -> bytes:
    """A valid PNG of noise, stored without compression: about width * height * 3 bytes."""
    rows = b"".join(b"\x00" + os.urandom(width * 3) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 0)) + chunk(b"IEND", b"")


# 0.55 MiB: two fit a key's share, three the whole bound. (Under 1 MiB: aiohttp warns of a larger bytes body,
# an error under pytest, when the gateway sends it upstream.)
IMAGE = large_png(440, 440)


@pytest.fixture(params=["redis", "memory"])
def bounded_gateway(
    request: pytest.FixtureRequest, fresh_emulators: dict[str, EmulatorServer], tmp_path: Path
) -> Iterator[tuple[GatewayServer, str | None]]:
    prefix = f"igw-jobs-bytes-{uuid.uuid4().hex[:8]}:"
    sections: dict[str, Any] = {
        "auth": {"keys": [{"name": name, "hash": hash_key(key)} for name, key in KEYS.items()]},
        "jobs": {"consumers": 1, "max_queued_bytes": MAX_BYTES, "max_queued_bytes_per_key": MAX_BYTES_PER_KEY},
    }
    if request.param == "redis":
        sections["redis"] = {"url": require_shared_redis(), "key_prefix": prefix}
    server = start_gateway(fresh_emulators, MODELS, tmp_path / "store", **sections)
    try:
        yield server, prefix if request.param == "redis" else None
    finally:
        server.stop()
        if request.param == "redis":
            shared = redis.Redis.from_url(require_shared_redis())
            for key in shared.scan_iter(f"{prefix}*"):
                shared.delete(key)


def edit(http: httpx.Client, server: GatewayServer, who: str) -> httpx.Response:
    return http.post(
        server.url + EDITS,
        headers={"Authorization": f"Bearer {KEYS[who]}", "Prefer": "respond-async"},
        data={"model": "kontext", "prompt": "a lighthouse", "size": "512x512", "response_format": "b64_json"},
        files={"image": ("in.png", IMAGE, "image/png")},
    )


def accepted(answer: httpx.Response) -> str:
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def refused(answer: httpx.Response, status: int) -> None:
    assert answer.status_code == status, answer.text
    assert int(answer.headers["retry-after"]) >= 1
    assert "bytes" in answer.text


def held_in_redis(prefix: str) -> tuple[int, int]:
    """The bytes the gateway counts as held, and the sum of the payloads actually kept in Redis."""
    shared = redis.Redis.from_url(require_shared_redis())
    counted = int(shared.hget(f"{prefix}jobs:bytes", "total") or 0)
    kept = sum(int(shared.hstrlen(key, "payload")) for key in shared.scan_iter(f"{prefix}job:*"))
    return counted, kept


def wait_ended(http: httpx.Client, server: GatewayServer, job_id: str, who: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        body: dict[str, Any] = http.get(
            f"{server.url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {KEYS[who]}"}
        ).json()
        if body["status"] in ("succeeded", "failed", "canceled"):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.1)


def test_queued_bytes_are_bounded_per_key_and_in_all(
    bounded_gateway: tuple[GatewayServer, str | None],
    fresh_emulators: dict[str, EmulatorServer],
    http: httpx.Client,
) -> None:
    server, prefix = bounded_gateway
    fresh_emulators["nebul"].emulator.add_fault(Fault(delay=600))  # the first job holds the one consumer
    alice = [accepted(edit(http, server, "alice")) for _ in range(2)]
    refused(edit(http, server, "alice"), 429)  # a third is past alice's share; the total has room
    bob = [accepted(edit(http, server, "bob"))]
    refused(edit(http, server, "bob"), 503)  # within bob's share, past the whole bound
    refused(edit(http, server, "alice"), 429)
    if prefix is not None:
        counted, kept = held_in_redis(prefix)
        assert counted == kept and 3 * len(IMAGE) <= kept <= MAX_BYTES

    # Jobs end (cancelled, the running one too, and one that runs to its end): their bytes come back.
    for job_id in alice:
        assert http.delete(f"{server.url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {KEYS['alice']}"})
    assert wait_ended(http, server, bob[0], "bob")["status"] == "succeeded"
    if prefix is not None:
        assert held_in_redis(prefix) == (0, 0)
    again = [accepted(edit(http, server, "alice")), accepted(edit(http, server, "bob"))]
    for job_id, who in zip(again, ["alice", "bob"], strict=True):
        assert wait_ended(http, server, job_id, who)["status"] == "succeeded"
    if prefix is not None:
        assert held_in_redis(prefix) == (0, 0)


def test_a_key_share_larger_than_the_whole_bound_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"max_queued_bytes_per_key must be at most max_queued_bytes"):
        config({}, [], jobs={"max_queued_bytes": MiB, "max_queued_bytes_per_key": 2 * MiB})
    for field in ("max_queued_bytes", "max_queued_bytes_per_key"):
        with pytest.raises(ConfigError, match=rf"at `\$\.jobs\.{field}`"):
            config({}, [], jobs={field: 0})
