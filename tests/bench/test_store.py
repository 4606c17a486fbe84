"""`python -m bench.store`'s writer: its section rewritten in place, its row of "Today's figures" at the top."""

from __future__ import annotations

from pathlib import Path

from bench.store import BEGIN, END, HEADLINE_END, HEADLINE_START, Measured, headline, write_docs


def rows() -> list[Measured]:
    def one(client: str, operation: str, concurrency: int, p50: float, cpu: float) -> Measured:
        return Measured(client=client, operation=operation, concurrency=concurrency, calls=10, p50_ms=p50,
                        p95_ms=2 * p50, cpu_ms_per_call=cpu, per_second=100.0)  # fmt: skip

    return [
        one("obstore", "put 2 MB", 1, 22.383, 2.496),
        one("aiobotocore", "put 2 MB", 1, 30.327, 7.875),
        one("obstore", "put 2 MB", 8, 101.111, 2.8),
        one("obstore", "presign GET (sync)", 1, 0.013, 0.037),
    ]


def test_the_headline_leads_with_date_machine_command_and_transport() -> None:
    head, rule, row = headline(rows()).splitlines()
    assert head.startswith("| date | machine | command | default transport |")
    assert head.count("|") == rule.count("|") == row.count("|")
    assert "| `python -m bench.store` | n/a (S3 through obstore) |" in row
    assert row.endswith("| obstore 0.013 / 0.037 ms | aiobotocore 30.327 / 7.875 ms; obstore 22.383 / 2.496 ms |")
    assert "101.111" not in row  # one at a time only


def test_the_section_is_rewritten_in_place_and_the_row_at_the_top(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(
        f"# Benchmarks\n\n{HEADLINE_START}\nold row\n{HEADLINE_END}\n\n## The image store\n\n{BEGIN}\nold\n{END}\n"
        "\nWhat the rows say\n\n## History\n"
    )
    for _ in range(2):
        write_docs(f"{BEGIN}\n| obstore | put 2 MB | 1 |\n{END}", doc, headline(rows()))  # as render() writes it
    text = doc.read_text()
    assert "old row" not in text and "\nold\n" not in text and text.count(BEGIN) == text.count(HEADLINE_START) == 1
    order = [text.index(x) for x in (HEADLINE_START, "| 2026-", HEADLINE_END, "## The image store", BEGIN,
                                     "| obstore | put 2 MB | 1 |", END, "What the rows say", "## History")]  # fmt: skip
    assert order == sorted(order)


def test_the_real_docs_carry_both_markers_in_order() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md").read_text()
    assert text.count(HEADLINE_START) == text.count(HEADLINE_END) == text.count(BEGIN) == text.count(END) == 1
    assert text.index(HEADLINE_END) < text.index(BEGIN) < text.index("\n## History")
