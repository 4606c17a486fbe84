"""``make bench-local`` keeps working: a short run measures every row, and the doc keeps its other sections."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from bench.local import (
    CPU_PART,
    END,
    GPU_NOT_MEASURED,
    GPU_PART,
    HEADLINE_END,
    HEADLINE_START,
    START,
    Measured,
    Row,
    cpu_setup,
    headline,
    measure,
    render,
    write_doc,
)
from bench.speed import CACHE_THRESHOLDS, batch_sweep, option_rows, suggested_batch_pixels
from bench.speed import render as render_speed


async def test_a_short_run_measures_every_row() -> None:
    measured = await measure(cpu_setup(4), repeats=1)
    paths = [(row.path, row.concurrency) for row in measured.rows]
    assert paths == [
        ("bare pipeline loop, 1 per call", 1),
        ("bare pipeline loop, 4 per call", 1),
        ("engine", 1),
        ("engine", 4),
        ("engine", 16),
    ]
    assert all(row.images_per_s > 0 for row in measured.rows)
    assert measured.rows[2].batch_sizes == {1: 4}  # one client at a time: never a companion to batch with
    assert "| engine | 16 |" in render(measured)


def test_the_doc_section_is_rewritten_in_place(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n<!-- proxy:start -->\n## Proxy\nkept\n<!-- proxy:end -->\n")
    write_doc({CPU_PART: "first\n"}, doc)
    write_doc({CPU_PART: "second\n"}, doc)
    text = doc.read_text()
    assert text.count(START) == 1 and text.endswith(END + "\n")
    assert "## Proxy\nkept\n" in text and "second" in text and "first" not in text
    assert GPU_PART in text and GPU_NOT_MEASURED.strip() in text
    write_doc({GPU_PART: "gpu numbers\n"}, doc)
    assert "second" in doc.read_text() and "gpu numbers" in doc.read_text()  # the CPU part is kept


def test_the_headline_row_is_rewritten_at_the_top_and_the_section_stays_where_it_is(tmp_path: Path) -> None:
    rows = [
        Row(path="bare pipeline loop, 1 per call", concurrency=1, images_per_s=27.0),
        Row(path="bare pipeline loop, 4 per call", concurrency=1, images_per_s=88.3),
        Row(path="engine", concurrency=1, images_per_s=27.0, p50_ms=36.7),
        Row(path="engine", concurrency=4, images_per_s=70.8, p50_ms=48.3),
        Row(path="engine", concurrency=16, images_per_s=83.6, p50_ms=189.1),
    ]
    machine = (
        "A CPU, 2 cores, torch t with 2 threads; Python 3.11, Linux x86_64; 2026-12-07; load average 1.29 at the start"
    )
    measured = Measured(
        setup=cpu_setup(64),
        repeats=3,
        rows=rows,
        overhead_ms=-0.3,
        overhead_percent=-1.1,
        mean_overhead_ms=0.1,
        machine=machine,
        busy_overhead_percent=5.3,
        when="2026-12-07 17:00 UTC",
    )
    top = headline(measured, "python -m bench.local --cpu-only")
    head, rule, row = top.splitlines()
    assert head.startswith("| date | machine | command | default transport |")
    assert head.count("|") == rule.count("|") == row.count("|")
    assert row.startswith(
        "| 2026-12-07 17:00 UTC | A CPU, 2 cores, torch t with 2 threads; load average 1.29 at the start | "
        "`python -m bench.local --cpu-only` | none (in process) | 64x64, 2 steps | 27.0 / 83.6 | 27.0 / 88.3 |"
    )
    assert row.endswith("| -1% (-0.3 ms) | +5.3% |")
    doc = tmp_path / "benchmarks.md"
    doc.write_text(
        f"# Benchmarks\n\n{HEADLINE_START}\nold row\n{HEADLINE_END}\n\nnote\n\n{START}\n## Local backend\nold\n{END}\n"
        "\n## History\n"
    )
    write_doc({CPU_PART: "cpu figures\n"}, doc, top=top)
    text = doc.read_text()
    assert "old row" not in text and text.count(HEADLINE_START) == text.count(START) == 1
    marks = (HEADLINE_START, row, HEADLINE_END, "note", START, "cpu figures", END, "## History")
    order = [text.index(x) for x in marks]
    assert order == sorted(order)
    bare = tmp_path / "bare.md"
    write_doc({CPU_PART: "cpu figures\n"}, bare, top=top)
    assert row not in bare.read_text() and HEADLINE_START not in bare.read_text()  # no markers: no headline


def test_the_speed_bench_counts_what_each_option_skips_and_finds_the_knee() -> None:
    steps = 8
    rows = option_rows("builtin:tiny-flux", "cpu", torch.float32, 64, steps, repeats=1, compile=False)
    by_option = {row.option: row for row in rows}
    assert list(by_option) == ["exact (default)", *(f"cache first_block:{t:g}" for t in CACHE_THRESHOLDS),
                               "fuse_qkv", "channels_last"]  # fmt: skip
    assert by_option["exact (default)"].tail_evaluations == steps and math.isinf(by_option["exact (default)"].psnr_db)
    assert by_option["cache first_block:0.3"].tail_evaluations < steps  # as tests/local_backend/test_speed.py
    assert by_option["fuse_qkv"].psnr_db > 40
    batches = batch_sweep("builtin:tiny-sd", "cpu", torch.float32, [64, 128], 2, max_batch=2, repeats=1)
    assert [(row.size, row.batch) for row in batches] == [(64, 1), (64, 2), (128, 1), (128, 2)]
    knee = suggested_batch_pixels(batches)
    assert knee in (128 * 128, 2 * 128 * 128)
    table = render_speed(rows, batches)
    assert "| cache first_block:0.3 |" in table and "Suggested `batch_pixels`" in table
