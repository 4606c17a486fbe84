"""The before/after comparison (bench/tree.py): its table, ratios and paired rounds, and what it refuses."""

from __future__ import annotations

import subprocess
from pathlib import Path

import msgspec
import pytest

from bench.dispatch import LITESTAR, DispatchComparison
from bench.proxy import parse_args
from bench.report import write_docs
from bench.tree import BEFORE, TREE, before_tree, describe, render_tree
from tests.bench.test_dispatch import MACHINE, row
from tests.bench.test_dispatch import comparison as dispatch_comparison


def comparison(after: list[float], before: list[float]) -> DispatchComparison:
    """The dispatch comparison's figures, this checkout's gateway against another checkout's."""
    rows = [row(LITESTAR, after), row(BEFORE, before)]
    return msgspec.structs.replace(dispatch_comparison(after, before, None), rows=rows, other=BEFORE)


def test_the_table_puts_before_and_after_side_by_side_with_their_ratio(tmp_path: Path) -> None:
    result = comparison(after=[0.9, 1.0, 0.8], before=[1.0, 1.2, 1.0])
    text = render_tree(result, MACHINE, "python -m bench.proxy --compare-tree /x", after="abc1234 (new)",
                       before="def5678 (old)")  # fmt: skip
    assert text.startswith("## Before and after a change")
    lines = text.splitlines()
    before_line = next(line for line in lines if line.startswith("| before |"))
    after_line = next(line for line in lines if line.startswith("| after |"))
    ratio_line = next(line for line in lines if line.startswith("| after / before |"))
    assert "| 1.067 ms |" in before_line and "| 0.900 ms |" in after_line  # pooled light CPU per request
    assert "| 0.84x |" in ratio_line  # 0.9 / 1.0667
    # The paired median: rounds (0.9-1.0, 1.0-1.2, 0.8-1.0) = (-0.1, -0.2, -0.2): median -0.2 ms.
    assert "CPU per light request -200.0 µs" in text
    assert "after = abc1234 (new), before = def5678 (old)" in text
    docs = tmp_path / "benchmarks.md"
    write_docs(docs, text, TREE)
    assert docs.read_text().count(TREE.start) == 1


def test_rounds_must_pair() -> None:
    with pytest.raises(ValueError):
        comparison(after=[1.0, 1.0], before=[1.0, 1.0, 1.0]).paired_extra_ms("light")


def test_the_other_tree_must_be_a_checkout(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"no gateway/cli\.py"):
        before_tree(str(tmp_path))
    (tmp_path / "gateway").mkdir()
    (tmp_path / "gateway" / "cli.py").write_text("")
    contender = before_tree(str(tmp_path))
    assert contender.tree == str(tmp_path.resolve()) and contender.name == BEFORE
    assert describe(tmp_path) == str(tmp_path)  # not a git checkout: its path


def test_describe_names_the_commit(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "the subject"], check=True)
    assert describe(tmp_path).endswith("(the subject)")


def test_compare_only_needs_a_comparison() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--compare-only"])
    args = parse_args(["--compare-only", "--compare-tree", "/x"])
    assert args.compare_only and args.compare_tree == "/x"


def test_instructions_reads_callgrinds_totals(tmp_path: Path) -> None:
    from bench.instructions import _totals

    dump = tmp_path / "callgrind.out.1"
    dump.write_text("version: 1\ncreator: callgrind-3.22.0\nevents: Ir\nfn=(1) main\n0 5\ntotals: 123456789\n")
    assert _totals(dump) == 123456789
    (tmp_path / "empty").write_text("events: Ir\n")
    with pytest.raises(RuntimeError, match="no totals"):
        _totals(tmp_path / "empty")
