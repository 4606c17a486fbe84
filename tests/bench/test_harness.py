"""A fast smoke test of the benchmark harness (bench/): the load generator against a
real emulator (no LiteLLM, no gateway, no Redis), its HTTP parsing, and the report plumbing."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.loadgen import PhaseSpec, percentile, run_phase, summarize
from bench.proxy import END, START, fold, write_docs
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
    result = json.loads(out.stdout)
    assert result["errors"] == {}
    assert result["sent"] == result["ok"] == 100
    assert 45 <= result["achieved_rate"] <= 55
    assert 1.9 <= result["send_window_s"] <= 2.5  # sends follow the clock, not the answers
    lat = result["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"] < 1000
    assert len(result["latencies_ms"]) == 100
    assert result["answer_bytes"] > 100
    assert result["connections_opened"] >= 1
    proc = result["proc"]["emulator"]
    assert proc["cpu_s"] >= 0 and proc["rss_peak"] > 0
    assert 0 <= result["system"]["busy_cores"] <= result["system"]["cores"] + 0.5


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
    assert stats["count"] == 100 and stats["p95"] == 95 and stats["max"] == 100 and stats["mean"] == 50.5
    assert summarize([])["count"] == 0


def test_docs_block_is_replaced_and_the_rest_left_alone(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    write_docs(docs, "first run")
    assert docs.read_text().startswith("# Benchmarks\n") and "first run" in docs.read_text()
    local = "<!-- local:start -->\nlocal numbers\n<!-- local:end -->\n"
    docs.write_text(docs.read_text() + "\n" + local)
    write_docs(docs, "second run")
    text = docs.read_text()
    assert "first run" not in text and "second run" in text and local in text
    assert text.count(START) == text.count(END) == 1


def test_fold_groups_py_spy_samples() -> None:
    raw = "\n".join(
        [
            "main (a.py:1);H11Protocol.data_received (uvicorn/protocols/http/h11_impl.py:1);write (x.py:2) 30",
            "main (a.py:1);HttpAdapter._call (adapters/http.py:131);AsyncClient.send (httpx/_client.py:1) 50",
            "main (a.py:1);Router.generate (gateway/router.py:1) 12",
            "main (a.py:1);Router.generate (gateway/router.py:2);current_task (asyncio/tasks.py:38) 8",
            "main (a.py:1);EpollSelector.select (selectors.py:468) 100",
        ]
    )
    folded = fold(raw)
    assert folded["busy_samples"] == 100 and folded["idle_samples"] == 100
    shares = dict(folded["categories"])
    assert shares["upstream client: httpx + httpcore (and h11, anyio under them)"] == 50
    assert shares["HTTP server: uvicorn (and its parser)"] == 30
    assert shares["gateway code (gateway/, adapters/, schemas/)"] == 20  # asyncio under it counts for it
    assert dict(folded["gateway_inclusive"])["Router.generate (gateway/router.py)"] == 20  # lines merged


def test_server_and_proxy_sections_are_each_rewritten_in_place(tmp_path: Path) -> None:
    from bench import servers

    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nkept above\n")
    write_docs(docs, "proxy one")
    servers.write_docs(docs, "servers one")
    docs.write_text(docs.read_text() + "\nkept below\n")
    write_docs(docs, "proxy two")
    servers.write_docs(docs, "servers two")
    text = docs.read_text()
    assert text.count(START) == text.count(servers.START) == 1
    assert "proxy two" in text and "servers two" in text and "one" not in text
    assert text.index("kept above") < text.index(START) < text.index(servers.START) < text.index("kept below")


def test_every_server_variant_serves_on_the_port_it_is_given(tmp_path: Path) -> None:
    from bench import servers

    found = servers.variants(tmp_path / "gateway.json", 4321)
    labels = [label for label, _, _ in found]
    assert labels[0].startswith("uvicorn, uvloop") and labels[-1].endswith("2 processes")
    for _, command, _ in found:
        assert command[command.index("--port") + 1] == "4321"


def test_portkey_is_pointed_at_the_emulator_as_a_custom_openai_host(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from bench.portkey import PortkeyBench

    services = {
        "emulator": SimpleNamespace(base_url="http://127.0.0.1:9101", pid=11),
        "portkey": SimpleNamespace(base_url="http://127.0.0.1:8787", pid=12),
    }
    bench = PortkeyBench(SimpleNamespace(), SimpleNamespace(services=services))  # type: ignore[arg-type]
    base, headers, watch = bench.target("portkey", heavy=False)
    assert base == "http://127.0.0.1:8787" and watch == {"portkey": 12}
    assert headers["x-portkey-provider"] == "openai"
    assert headers["x-portkey-custom-host"] == "http://127.0.0.1:9101/v1"
    assert bench.target("floor", heavy=False)[0] == "http://127.0.0.1:9101"
