"""The dispatch comparison's section (bench/dispatch.py): its figures, and what the 0.05 ms rule reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.dispatch import (
    DIRECT,
    DISPATCH,
    LITESTAR,
    DispatchComparison,
    DispatchRow,
    render_dispatch,
    render_dispatch_headline,
)
from bench.report import write_docs
from bench.results import GatewayStack, Machine


def row(path: str, light: list[float]) -> DispatchRow:
    return DispatchRow(
        path=path,
        light_added_p50=1.0,
        light_added_p99=2.0,
        light_cpu_ms=sum(light) / len(light),
        light_cpu_ms_rounds=light,
        closed_rate=1000.0,
        closed_p50=5.0,
        closed_cpu_ms=0.9,
        closed_cpu_ms_rounds=[0.9, 0.9],
        heavy_p50=100.0,
        heavy_p99=120.0,
        heavy_cpu_ms=30.0,
        errors=0,
    )


def comparison(litestar: list[float], direct: list[float], in_process_us: float | None) -> DispatchComparison:
    in_process: dict[str, Any] = {}
    if in_process_us is not None:
        in_process = {
            "rounds": 3,
            "requests_per_round": 100,
            "us_per_request": {"litestar": {"median": 60.0, "min": 55.0}, "direct": {"median": 40.0, "min": 38.0}},
            "litestar_minus_direct_us": {"median": in_process_us, "per_round": [in_process_us] * 3},
        }
    return DispatchComparison(
        rate=200.0,
        light_rounds=2,
        rounds=2,
        duration=5.0,
        heavy_rate=2.0,
        heavy_duration=8.0,
        clients=32,
        rows=[row(LITESTAR, litestar), row(DIRECT, direct)],
        in_process=in_process,
    )


MACHINE = Machine(
    date="2026-12-07 15:00 UTC",
    cpu_model="a CPU",
    cores=2,
    cores_usable=2,
    mem_gib=8.0,
    kernel="k",
    python="3.11",
    loadavg_start=(1.0, 1.0, 1.0),
    gateway_stack=GatewayStack(uvicorn="u", litestar="l", httpx="h", redis="r", loop="uvloop", http="httptools"),
)


def test_the_rule_reads_the_in_process_figure_when_there_is_one() -> None:
    noisy = comparison([1.5, 1.9], [1.4, 1.5], in_process_us=20.0)  # the servers: +0.25 ms; in process: +0.02 ms
    assert noisy.adopted and round(noisy.deciding_ms, 3) == 0.02
    assert round(noisy.paired_light_extra_ms(), 3) == 0.25
    text = render_dispatch(noisy, MACHINE, "python -m bench.proxy --compare-dispatch")
    assert text.startswith("## Dialect routes: Litestar route handlers against the direct dispatch")
    assert "read in process (+0.020 ms), that is within the threshold" in text
    assert "+20.0 µs" in text
    costly = comparison([1.5, 1.5], [1.4, 1.4], in_process_us=80.0)
    assert not costly.adopted and "over the threshold" in render_dispatch(costly, MACHINE, "x")


def test_without_the_in_process_figure_the_servers_decide(tmp_path: Path) -> None:
    result = comparison([1.5, 1.5], [1.4, 1.4], in_process_us=None)
    assert not result.adopted and round(result.deciding_ms, 3) == 0.1
    docs = tmp_path / "benchmarks.md"
    write_docs(docs, render_dispatch(result, MACHINE, "x"), DISPATCH)
    text = docs.read_text()
    assert text.count(DISPATCH.start) == text.count(DISPATCH.end) == 1
    assert "read on the servers (+0.100 ms), that is over the threshold" in text


def test_the_headline_row_says_what_the_rule_read_and_decided() -> None:
    text = render_dispatch_headline(comparison([1.5, 1.9], [1.4, 1.5], in_process_us=20.0), MACHINE, "cmd", "aiohttp")
    head, _, row = text.splitlines()
    assert head.startswith("| date | machine | command | default transport |")
    assert row.startswith("| 2026-12-07 15:00 UTC | a CPU, 2 cores (load 1.00 at the start) | `cmd` | aiohttp |")
    assert "| 60.0 / 40.0 µs (+20.0 µs) |" in row and row.endswith("| Litestar route handlers kept |")
    costly = render_dispatch_headline(comparison([1.5], [1.4], in_process_us=None), MACHINE, "cmd", "aiohttp")
    assert "in process" not in costly and costly.rstrip().endswith("| over: the direct dispatch would be kept |")
