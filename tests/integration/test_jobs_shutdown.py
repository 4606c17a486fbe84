"""A replica that is told to stop (SIGTERM) ends within its grace, whatever Redis does, and loses no job.

Real gateway processes (``image-gateway serve``) on the real Redis, each test under a key prefix of
its own; a slow upstream is the Melious emulator with a delay; a Redis that stops answering is a TCP
proxy on loopback, in front of the real one, that stops forwarding.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import redis
import yaml

from gateway.admission.auth import hash_key
from gateway.jobs.queue import QUEUED, JobRecord
from gateway.jobs.redis_queue import RedisJobQueue
from gateway.shutdown import MARGIN_S
from schemas.canonical import ImageRequest, ResponseFormat, encode_hook
from tests.emulators import EmulatorServer, Fault
from tests.integration.test_jobs_replicas import wait_for
from tests.redis_support import require_shared_redis
from tests.servers import GatewayProcess

KEY = "sk-shutdown-jobs-0123456789"
HEADERS = {"Authorization": f"Bearer {KEY}"}
GRACE_S = 3.0
CLAIM_AFTER_S = 120  # far longer than any test waits: a job comes back because it was handed back, not claimed
# The bound on a stop: the grace, the margin the process gives itself, and room for a loaded 2-core machine.
EXIT_BOUND_S = GRACE_S + MARGIN_S + 10


@pytest.fixture
def prefix() -> Iterator[str]:
    prefix = f"igw-jobs-shutdown-{uuid.uuid4().hex[:8]}:"
    yield prefix
    shared = redis.Redis.from_url(require_shared_redis())
    for key in shared.scan_iter(f"{prefix}*"):
        shared.delete(key)


def config_file(
    tmp_path: Path, emulators: dict[str, EmulatorServer], redis_url: str, prefix: str, **redis_extra: Any
) -> Path:
    config: dict[str, Any] = {
        "server": {"shutdown_grace_s": GRACE_S},
        "redis": {"url": redis_url, "key_prefix": prefix, **redis_extra},
        "jobs": {"claim_after_s": CLAIM_AFTER_S, "consumers": 2},
        "auth": {"keys": [{"name": "alice", "hash": hash_key(KEY)}]},
        "image_store": {"path": str(tmp_path / "store")},
        "providers": {"melious": {"kind": "melious", "base_url": emulators["melious"].base_url, "api_key": "test-key"}},
        "models": [{"name": "flux-schnell", "targets": [{"provider": "melious", "model": "flux-schnell"}]}],
    }
    path = tmp_path / f"gateway-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def job(http: httpx.Client, base: str, job_id: str) -> dict[str, Any]:
    answer = http.get(f"{base}/v1/jobs/{job_id}", headers=HEADERS)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def submit(http: httpx.Client, base: str, prompt: str) -> str:
    answer = http.post(
        base + "/v1/images/generations",
        json={"model": "flux-schnell", "prompt": prompt, "size": "512x512", "response_format": "b64_json"},
        headers={**HEADERS, "Prefer": "respond-async"},
    )
    assert answer.status_code == 202, answer.text
    job_id: str = answer.json()["id"]
    return job_id


def terminate(gateway: GatewayProcess) -> float:
    """SIGTERM; the seconds it took the process to exit (it must, within EXIT_BOUND_S)."""
    started = time.monotonic()
    gateway.process.send_signal(signal.SIGTERM)
    try:
        gateway.process.wait(timeout=EXIT_BOUND_S)
    except subprocess.TimeoutExpired:
        gateway.process.kill()
        gateway.process.wait()
        raise AssertionError(
            f"still running {EXIT_BOUND_S:g} s after SIGTERM (grace {GRACE_S:g} s): {gateway.log.read_text()[-3000:]}"
        ) from None
    return time.monotonic() - started


def stop_quietly(gateway: GatewayProcess | None) -> None:
    if gateway is not None and gateway.process.poll() is None:
        gateway.process.kill()
        gateway.process.wait()


def raw_record(prefix: str, job_id: str) -> JobRecord:
    raw = redis.Redis.from_url(require_shared_redis()).hget(f"{prefix}job:{job_id}", "record")
    assert raw is not None
    return msgspec.json.decode(raw, type=JobRecord)


def test_a_job_past_the_grace_is_handed_back_and_finished_by_another_replica(
    tmp_path: Path, prefix: str, fresh_emulators: dict[str, EmulatorServer], http: httpx.Client
) -> None:
    melious = fresh_emulators["melious"].emulator
    melious.add_fault(Fault(delay=600))  # the first call outlives the grace by far
    path = config_file(tmp_path, fresh_emulators, require_shared_redis(), prefix)
    first = GatewayProcess(path).wait_ready()
    second: GatewayProcess | None = None
    try:
        job_id = submit(http, first.url, "a slow one")
        wait_for(lambda: job(http, first.url, job_id)["status"] == "running", "the job runs")
        wait_for(lambda: len(melious.calls) == 1, "the upstream call is made")

        took = terminate(first)
        assert took >= GRACE_S - 0.5  # the job was given its grace
        log = first.log.read_text()
        assert '"shutdown_begun"' in log and '"jobs_handed_back"' in log, log[-3000:]
        record = raw_record(prefix, job_id)
        assert record.status == QUEUED and record.runs == 0  # handed back: this run does not count
        # Far sooner than claim_after_s: the entry was marked abandoned as the process left.
        second = GatewayProcess(path).wait_ready()
        done = wait_for(
            lambda: (body := job(http, second.url, job_id))["status"] in ("succeeded", "failed") and body,
            "another replica finishes the handed-back job",
            timeout=CLAIM_AFTER_S / 2,
        )
        assert done["status"] == "succeeded", done
        assert done["result"]["data"][0]["b64_json"]
        assert len(melious.calls) == 2  # the interrupted call, then the second replica's
        assert '"job_claimed"' in second.log.read_text()
    finally:
        stop_quietly(first)
        if second is not None:
            second.stop()


def test_a_job_within_the_grace_finishes_and_no_job_is_taken_after_sigterm(
    tmp_path: Path, prefix: str, fresh_emulators: dict[str, EmulatorServer], http: httpx.Client
) -> None:
    melious = fresh_emulators["melious"].emulator
    melious.add_fault(Fault(delay=GRACE_S / 2))  # ends well within the grace
    path = config_file(tmp_path, fresh_emulators, require_shared_redis(), prefix)
    first = GatewayProcess(path).wait_ready()
    second: GatewayProcess | None = None
    try:
        running = submit(http, first.url, "finishes within the grace")
        wait_for(lambda: len(melious.calls) == 1, "the upstream call is made")
        # A client follows the job: its open request keeps the server draining (uvicorn waits for it
        # before the app's shutdown runs), the time in which consumers used to go on taking jobs.
        events: list[str] = []
        follower = threading.Thread(target=follow, args=(first.url, running, events), daemon=True)
        follower.start()
        wait_for(lambda: events, "the follower is connected")
        first.process.send_signal(signal.SIGTERM)
        wait_for(lambda: '"jobs_stop_taking"' in first.log.read_text(), "the consumers stop", timeout=EXIT_BOUND_S)
        # A job queued now, on the same Redis (the gateway's own queue code): the stopping replica leaves it.
        late = enqueue(prefix, "queued after SIGTERM")
        try:
            first.process.wait(timeout=EXIT_BOUND_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"no exit after SIGTERM: {first.log.read_text()[-3000:]}") from None

        finished = raw_record(prefix, running)
        assert finished.status == "succeeded", finished  # by the stopping replica, within its grace
        untouched = raw_record(prefix, late)
        assert untouched.status == QUEUED and untouched.runs == 0
        assert late not in first.log.read_text()
        assert len(melious.calls) == 1
        follower.join(timeout=EXIT_BOUND_S)
        assert any("event: result" in line for line in events), events  # the follower saw the end

        second = GatewayProcess(path).wait_ready()
        done = wait_for(
            lambda: (body := job(http, second.url, late))["status"] in ("succeeded", "failed") and body,
            "another replica runs the job queued after SIGTERM",
        )
        assert done["status"] == "succeeded", done
    finally:
        stop_quietly(first)
        if second is not None:
            second.stop()


def follow(base: str, job_id: str, lines: list[str]) -> None:
    with (
        httpx.Client(timeout=60) as client,
        client.stream("GET", f"{base}/v1/jobs/{job_id}/events", headers=HEADERS) as answer,
    ):
        for line in answer.iter_lines():
            lines.append(line)


def enqueue(prefix: str, prompt: str) -> str:
    """Queue a job as a submit would (``RedisJobQueue.put``), from this process."""

    async def put() -> str:
        queue = RedisJobQueue(require_shared_redis(), prefix, ttl_s=600, claim_after_s=CLAIM_AFTER_S)
        now = int(time.time())
        record = JobRecord(
            id=uuid.uuid4().hex,
            key="alice",
            route="/v1/images/generations",
            status=QUEUED,
            created_at=now,
            updated_at=now,
        )
        canonical = ImageRequest(
            model="flux-schnell", prompt=prompt, width=512, height=512, response_format=ResponseFormat.B64_JSON
        )
        try:
            await queue.put(record, msgspec.msgpack.encode(canonical, enc_hook=encode_hook))
        finally:
            await queue.aclose()
        return record.id

    return asyncio.run(put())


class StallingProxy:
    """A TCP proxy on loopback in front of a Redis; ``stall()`` makes it stop forwarding (both ways)
    while keeping every connection open: a Redis that takes commands and never answers."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.stalled = threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stall(self) -> None:
        self.stalled.set()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data:
                return
            if self.stalled.is_set():
                continue  # taken, never passed on
            try:
                target.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.closed = True
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


def test_sigterm_while_redis_stops_answering_always_ends_in_time(
    tmp_path: Path, prefix: str, fresh_emulators: dict[str, EmulatorServer]
) -> None:
    """Many times: Redis stops answering (its PINGs every few ms are then in flight for good, and so are the
    consumers' reads), SIGTERM at a random moment after: the process is gone within grace + margin."""
    require_shared_redis()
    rng = random.Random()
    for trial in range(10):
        proxy = StallingProxy(6379)
        path = config_file(tmp_path, fresh_emulators, proxy.url, prefix, probe_interval_s=0.005, timeout_s=0.05)
        gateway = GatewayProcess(path).wait_ready("/health")
        try:
            proxy.stall()
            time.sleep(rng.uniform(0.0, 1.0))
            took = terminate(gateway)
            assert gateway.process.returncode != 70, (
                f"trial {trial}: ended by its watchdog: {gateway.log.read_text()[-3000:]}"
            )
            assert took < EXIT_BOUND_S
        finally:
            stop_quietly(gateway)
            proxy.close()
