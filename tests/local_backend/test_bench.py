"""``make bench-local`` keeps working: a short run measures every row, and the doc keeps its other sections."""

from __future__ import annotations

from pathlib import Path

from bench.local import CPU_PART, END, GPU_NOT_MEASURED, GPU_PART, START, cpu_setup, measure, render, write_doc


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
