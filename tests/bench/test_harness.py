"""The load generator (bench/loadgen.py) against a real emulator (no LiteLLM, no gateway, no
Redis): its open and closed loops in its own process, its HTTP parsing, its statistics."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.loadgen import PhaseSpec, percentile, run_phase, summarize
from bench.results import Phase, loads
from tests.emulators import EmulatorServer, start_emulator

ROOT = Path(__file__).resolve().parents[2]
BODY = json.dumps({"prompt": "a lake", "size": "512x512", "response_format": "b64_json"})
AUTH = {"Authorization": "Bearer test-key"}


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    with start_emulator("melious", record_calls=False) as server:
        yield server


def test_open_loop_holds_a_low_fixed_rate_in_its_own_process(emulator: EmulatorServer) -> None:
    spec = {
        "url": emulator.url("/v1/images/generations"),
        "body": BODY,
        "headers": AUTH,
        "rate": 50,
        "duration": 2.0,
        "warmup_requests": 10,
        "expect": '"b64_json"',
        "watch": {"emulator": os.getpid()},  # the emulator runs on a thread of this process
    }
    out = subprocess.run(
        [sys.executable, "-m", "bench.loadgen"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    result = loads(out.stdout, Phase)  # what the harness reads back: typed, or a ValidationError
    assert result.errors == {}
    assert result.sent == result.ok == 100
    assert 45 <= result.achieved_rate <= 55
    assert 1.9 <= result.send_window_s <= 2.5  # sends follow the clock, not the answers
    lat = result.latency_ms
    assert 0 < lat.p50 <= lat.p95 <= lat.p99 <= lat.max < 1000
    assert len(result.latencies_ms) == 100
    assert result.answer_bytes > 100
    assert result.connections_opened >= 1
    proc = result.proc["emulator"]
    assert proc.cpu_s >= 0 and proc.rss_peak > 0
    assert 0 <= result.system.busy_cores <= result.system.cores + 0.5
    assert result.spec.rate == 50 and result.spec.headers == {} and "Bearer" not in out.stdout  # no key kept


async def test_closed_loop_in_process_and_errors_are_counted(emulator: EmulatorServer) -> None:
    url = emulator.url("/v1/images/generations")
    ok = await run_phase(
        PhaseSpec(url=url, body=BODY, headers=AUTH, mode="closed", concurrency=3, requests=30, warmup_requests=3)
    )
    assert ok.ok == 30 and ok.errors == {} and ok.max_in_flight <= 3
    bad_key = await run_phase(
        PhaseSpec(url=url, body=BODY, headers={"Authorization": "Bearer nope"}, mode="closed", requests=5)
    )
    assert bad_key.ok == 0 and bad_key.errors == {"HTTP 401": 5}
    missing = await run_phase(PhaseSpec(url=url, body=BODY, headers=AUTH, mode="closed", requests=2, expect="nope"))
    assert missing.errors == {"answer without the expected marker": 2}


async def _odd_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers chunked, then (second request) a body delimited by the connection's close."""
    for answer in (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
    ):
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)  # the body "{}"
        writer.write(answer)
        await writer.drain()
    writer.close()


async def test_parses_chunked_and_close_delimited_answers() -> None:
    server = await asyncio.start_server(_odd_server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        spec = PhaseSpec(url=f"http://127.0.0.1:{port}/", mode="closed", requests=2, connections=1, warmup_requests=0)
        result = await run_phase(spec)
    finally:
        server.close()
        await server.wait_closed()
    assert result.errors == {} and result.ok == 2
    assert result.answer_bytes == (11 + 13) / 2


def test_percentiles_are_nearest_rank() -> None:
    values = [float(x) for x in range(1, 101)]
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99 and percentile(values, 100) == 100
    stats = summarize(reversed(values))
    assert stats.count == 100 and stats.p95 == 95 and stats.max == 100 and stats.mean == 50.5
    empty = summarize([])
    assert empty.count == 0 and math.isnan(empty.p50) and math.isnan(empty.max)
