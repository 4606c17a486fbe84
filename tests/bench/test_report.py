"""The report and the assessment on recorded results: the same Markdown, line for line, as the
renderer of the dict-based harness wrote for the same figures (tests/bench/recorded/README.md)."""

from __future__ import annotations

import json
import math
from argparse import Namespace
from pathlib import Path

import msgspec
import pytest

from bench.assess import assess, verdict
from bench.dispatch import DISPATCH
from bench.report import (
    PORTKEY,
    PROXY,
    SERVERS,
    mib,
    ms,
    ratio,
    render,
    render_headline,
    render_portkey,
    render_portkey_headline,
    render_servers,
    render_servers_headline,
    write_docs,
)
from bench.results import Machine, PortkeyResults, ProxyResults, ServerRow, loads

RECORDED = Path(__file__).parent / "recorded"


def recorded(name: str) -> ProxyResults:
    return loads((RECORDED / f"{name}.json").read_text(), ProxyResults)


@pytest.mark.parametrize("name", ["quick", "full"])
def test_the_proxy_section_is_the_one_the_old_harness_wrote(name: str) -> None:
    assert render(recorded(name)) == (RECORDED / f"{name}.md").read_text()


@pytest.mark.parametrize("name", ["quick", "full"])
def test_the_assessment_is_the_one_the_old_harness_made(name: str) -> None:
    results = recorded(name)
    judged = assess(msgspec.structs.replace(results, targets=[], obstacles=[]))
    assert judged.targets == results.targets
    assert judged.obstacles == results.obstacles


def test_the_full_recording_exercises_every_part_of_the_section() -> None:
    text = (RECORDED / "full.md").read_text()
    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert [h.split(":")[0].split("(")[0].strip() for h in headings] == [
        "## Proxy overhead",
        "### Added latency at a fixed rate",
        "### Highest rate one worker carries",
        "### CPU per request and memory",
        "### Heavy answers",
        "### Where the gateway's CPU goes",
        "### Where the gateway's CPU goes",
        "### Targets",
        "### What stands in the way",
    ]
    assert "py-spy at 1500 req/s: py-spy not installed" in text  # a profile that failed
    assert "not carried: answered 41/s of 50/s" in text and "(the floor itself missed the bound" in text
    assert "LiteLLM answers only 150 req/s here" in text
    assert len(recorded("full").obstacles) == 13  # every obstacle the figures can show, but one profile's


def test_without_litellm_its_columns_say_so() -> None:
    text = render(recorded("quick"))
    assert "LiteLLM: left out (--no-litellm)." in text
    assert "| CPU per request at 200 req/s | 1.10 ms | - ms | - |" in text
    assert "litellm" not in text.split("### Highest rate")[1].split("### CPU")[0]


def test_the_side_sections_are_the_ones_the_old_harness_wrote() -> None:
    side = json.loads((RECORDED / "side.json").read_text())
    servers, portkey = side["servers"], side["portkey"]
    rows = msgspec.convert(servers["rows"], list[ServerRow])
    machine = msgspec.convert(servers["machine"], Machine)
    text = render_servers(rows, Namespace(**servers["args"]), machine, servers["when"])
    assert text + "\n" == (RECORDED / "servers.md").read_text()
    results = msgspec.convert(portkey["results"], PortkeyResults)
    text = render_portkey(results, Namespace(**portkey["args"]), machine, portkey["when"])
    assert text + "\n" == (RECORDED / "portkey.md").read_text()


def test_figures_missing_show_as_a_dash() -> None:
    assert ms(math.nan) == "-" and ms(None) == "-" and ms(1.234) == "1.23" and ms(1.25, 1) == "1.2"
    assert mib(math.nan) == "-" and mib(3 * 1024 * 1024) == "3.0 MiB"
    assert ratio(4.0, 2.0) == "2.0x" and ratio(4.0, 0.0) == "-" and ratio(math.nan, 2.0) == "-"


def test_verdicts_say_by_how_much_a_target_was_missed() -> None:
    assert verdict(0.5, 0.7) == "met"
    assert verdict(1.4, 0.7) == "missed by 0.70 ms (100% over)"
    assert verdict(math.nan, 0.7) == "not measured"
    assert verdict(4.5, 3.0, unit="x") == "missed by 1.50x (50% over)"
    assert verdict(500, 1000, lower_is_better=False) == "missed: 500 of 1000 (50%)"


def test_each_section_is_rewritten_in_place_and_the_rest_left_alone(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    write_docs(docs, "proxy one")
    assert docs.read_text().startswith("# Benchmarks\n")
    docs.write_text(docs.read_text() + "\nkept between\n")
    write_docs(docs, "servers one", SERVERS)
    write_docs(docs, "portkey one", PORTKEY)
    docs.write_text(docs.read_text() + "\nkept below\n")
    for markers, block in ((PROXY, "proxy two"), (SERVERS, "servers two"), (PORTKEY, "portkey two")):
        write_docs(docs, block, markers)
    text = docs.read_text()
    assert "one" not in text and all(f"{n} two" in text for n in ("proxy", "servers", "portkey"))
    for markers in (PROXY, SERVERS, PORTKEY):
        assert text.count(markers.start) == text.count(markers.end) == 1
    order = [text.index(x) for x in (PROXY.start, "kept between", SERVERS.start, PORTKEY.start, "kept below")]
    assert order == sorted(order)


def test_a_headline_is_rewritten_at_the_top_and_its_section_where_it_is(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    top = PROXY.headline
    docs.write_text(
        f"# Benchmarks\n\n## Today's figures\n\n{top.start}\nold row\n{top.end}\n\nhand-written note\n\n"
        f"{PROXY.start}\nold details\n{PROXY.end}\n\n## History\n\nold runs\n"
    )
    for n in (1, 2):
        write_docs(docs, f"details {n}", PROXY, headline=f"| row {n} |")
    text = docs.read_text()
    assert "old row" not in text and "old details" not in text and "| row 1 |" not in text
    order = [text.index(x) for x in (top.start, "| row 2 |", top.end, "hand-written note", PROXY.start,
                                     "details 2", "## History", "old runs")]  # fmt: skip
    assert order == sorted(order)
    assert all(text.count(marker) == 1 for marker in (*top, *PROXY))


def test_a_file_without_headline_markers_gets_no_headline(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    write_docs(docs, "servers", SERVERS, headline="| top |")
    text = docs.read_text()
    assert "| top |" not in text and SERVERS.headline.start not in text and SERVERS.start in text


def test_each_headline_leads_with_date_machine_command_and_transport() -> None:
    lead = "| date | machine | command | default transport |"
    full = recorded("full")
    text = render_headline(full)
    tables = [line for line in text.splitlines() if line.startswith("| date ")]
    assert len(tables) == 2 and all(line.startswith(lead) for line in tables)  # light requests, heavy answers
    assert f"| {full.machine.date} | AMD EPYC, 2 cores (load 0.22 at the start) | `{full.meta.command}` |" in text
    assert "| not recorded |" in text  # recorded before the run kept its transport
    assert "LiteLLM's added p50 at 200 / 50 req/s" in text and "memory per request ÷ answer, 1 / 4 in flight" in text
    kept = msgspec.structs.replace(full, meta=msgspec.structs.replace(full.meta, upstream_transport="aiohttp"))
    assert "| aiohttp |" in render_headline(kept)
    assert "LiteLLM" not in render_headline(recorded("quick"))
    side = json.loads((RECORDED / "side.json").read_text())
    machine = msgspec.convert(side["servers"]["machine"], Machine)
    rows = msgspec.convert(side["servers"]["rows"], list[ServerRow])
    servers = render_servers_headline(rows, machine, side["servers"]["when"], "aiohttp")
    portkey = msgspec.convert(side["portkey"]["results"], PortkeyResults)
    portkey_text = render_portkey_headline(portkey, machine, side["portkey"]["when"], "aiohttp")
    for table in (servers, portkey_text):
        head, rule, row = table.splitlines()
        assert head.startswith(lead) and rule.startswith("|---|---|---|---|") and "| aiohttp |" in row
        assert head.count("|") == rule.count("|") == row.count("|")
    best = min(rows, key=lambda r: r.cpu_ms)
    assert f"| {best.label}: {ms(best.cpu_ms)} ms" in servers


def test_the_docs_carry_every_section_the_renderers_write() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md").read_text()
    today, history = text.index("## Today's figures"), text.index("\n## History")
    for markers in (PROXY, SERVERS, PORTKEY, DISPATCH):
        assert text.count(markers.start) == text.count(markers.end) == 1
        top = markers.headline
        assert text.count(top.start) == text.count(top.end) == 1
        # the headline in "Today's figures", before every section of details; the details before the history
        assert today < text.index(top.start) < text.index(top.end) < text.index("<!-- proxy:start -->")
        assert text.index(markers.end) < history
    section = text.split(PROXY.start)[1].split(PROXY.end)[0]
    assert section.lstrip().startswith("## Proxy overhead: image-gateway against LiteLLM (`make bench`)")


def test_make_bench_writes_its_headline_with_its_section(tmp_path: Path) -> None:
    from bench.proxy import publish

    docs = tmp_path / "benchmarks.md"
    top = PROXY.headline
    docs.write_text(f"# Benchmarks\n\n{top.start}\n{top.end}\n\n{PROXY.start}\n{PROXY.end}\n")
    results = recorded("quick")
    publish(results, Namespace(json_out=None, no_docs=False, docs=str(docs)))
    text = docs.read_text()
    assert render_headline(results).strip() in text.split(top.start)[1].split(top.end)[0]
    assert render(results).strip() in text.split(PROXY.start)[1].split(PROXY.end)[0]
