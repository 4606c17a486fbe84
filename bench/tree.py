"""`make bench` with ``--compare-tree DIR``: this checkout's gateway against another checkout's, side by side in
the same run (a before/after table for a change, e.g. ``git worktree add /tmp/before <commit>``).

The stack's gateway runs this checkout's code; a second gateway process, the same config, runs the other
checkout's (started there, its packages first on ``PYTHONPATH``; both with this virtualenv, so a change of
dependencies is not what is compared). Rounds are interleaved between the two (a drift of the shared machine
hits both alike), as ``--compare-dispatch`` does (bench/dispatch.py): light requests at the first fixed rate
(with the floor), closed-loop clients, and heavy answers. The section goes between `<!-- tree:start -->` and
`<!-- tree:end -->` in docs/benchmarks.md.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from bench.dispatch import LITESTAR, Contender, DispatchComparison, DispatchRow
from bench.report import Markers, ms
from bench.results import Machine

__all__ = ["BEFORE", "TREE", "before_tree", "describe", "render_tree"]

TREE = Markers.named("tree")
BEFORE = "gateway-before"


def before_tree(path: str) -> Contender:
    """The other checkout, as the second gateway of the comparison; a clear error when it holds no gateway."""
    tree = Path(path).resolve()
    if not (tree / "gateway" / "cli.py").is_file():
        raise SystemExit(f"--compare-tree {path}: no gateway/cli.py there (a checkout of this repository is expected)")
    return Contender(name=BEFORE, tree=str(tree))


def describe(path: str | Path) -> str:
    """A checkout as ``<commit> (<subject>)``, or its path when git cannot say."""
    out = subprocess.run(
        ["git", "-C", str(path), "log", "-1", "--format=%h (%s)"], capture_output=True, text=True, check=False
    )
    text = out.stdout.strip()
    if out.returncode != 0 or not text:
        return str(path)
    return text if len(text) <= 90 else text[:87] + "...)"


def _ratio(after: float, before: float) -> str:
    return f"{after / before:.2f}x" if before > 0 else "-"


def _row(label: str, row: DispatchRow) -> str:
    return (
        f"| {label} | {ms(row.light_added_p50)} ms | {ms(row.light_added_p99)} ms | {ms(row.light_cpu_ms, 3)} ms "
        f"| {row.closed_rate:.0f}/s | {ms(row.closed_cpu_ms, 3)} ms | {ms(row.heavy_p50, 1)} ms "
        f"| {ms(row.heavy_p99, 1)} ms | {ms(row.heavy_cpu_ms, 1)} ms | {row.errors} |"
    )


def render_tree(result: DispatchComparison, machine: Machine, command: str, after: str, before: str) -> str:
    """The section: before and after in one table, their ratios, and the paired rounds' differences."""
    new, old = result.row(LITESTAR), result.row(result.other)
    lines = [
        "## Before and after a change (`make bench`, `--compare-tree`)",
        "",
        f"Run {machine.date} on {machine.cpu_model}, {machine.cores} cores (load average at the start "
        f"{machine.loadavg_start[0]:.2f}; the machine is shared). Command: `{command}`. Two gateway processes, the "
        "same config (one uvicorn worker each, Redis rate limiting on, the emulator at a fixed delay) and the same "
        f"virtualenv: after = {after}, before = {before}. Interleaved rounds: {result.light_rounds} of "
        f"{result.duration:g} s at {result.rate:g} req/s with the floor (light: n=1, ~8 KB answer), "
        f"{result.rounds} of {result.clients} closed-loop clients for {result.duration:g} s, {result.rounds} of "
        f"heavy answers at {result.heavy_rate:g} req/s for {result.heavy_duration:g} s. CPU: the gateway "
        "process's utime+stime over the window, per answered request.",
        "",
        "| gateway | light added p50 | light added p99 | CPU per light request | closed loop answered "
        "| CPU per request there | heavy p50 | heavy p99 | CPU per heavy request | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        _row("before", old),
        _row("after", new),
        f"| after / before | {_ratio(new.light_added_p50, old.light_added_p50)} "
        f"| {_ratio(new.light_added_p99, old.light_added_p99)} | {_ratio(new.light_cpu_ms, old.light_cpu_ms)} "
        f"| {_ratio(new.closed_rate, old.closed_rate)} | {_ratio(new.closed_cpu_ms, old.closed_cpu_ms)} "
        f"| {_ratio(new.heavy_p50, old.heavy_p50)} | {_ratio(new.heavy_p99, old.heavy_p99)} "
        f"| {_ratio(new.heavy_cpu_ms, old.heavy_cpu_ms)} | |",
        "",
        f"Paired rounds (after - before, the median over the rounds, each round running both): CPU per light "
        f"request {result.paired_extra_ms('light') * 1000:+.1f} µs, closed loop "
        f"{result.paired_extra_ms('closed') * 1000:+.1f} µs. Light CPU per round: before "
        f"{', '.join(ms(v, 3) for v in old.light_cpu_ms_rounds)} ms; after "
        f"{', '.join(ms(v, 3) for v in new.light_cpu_ms_rounds)} ms.",
    ]
    return "\n".join(lines)
