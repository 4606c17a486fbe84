"""`make soak`, short: the whole topology for 40 s of traffic with every fault, and its goals met.

The run is `python -m soak` in its own process, as `make soak` runs it; this test reads the
summary it writes and asserts each goal line, so a miss names the goal and its measurement.
In 40 s every fault is held as long as in a minute's run (soak/faults.py; the alerts' ``for`` and
windows are the same for any run under 150 s, soak/run.py ``timings``) and the last one ends 7 s
before the traffic does; startup and drain add most of a minute, so the test starts first
(tests/conftest.py, ``SLOW_FIRST``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SHORT_S = 40
GOALS = [
    "0 accepted jobs lost",
    "0 answers outside the documented outcomes",
    "every ended job told by a verified webhook",
    "budgets exact",
    "memory bounded",
    "every expected alert fired and resolved",
    "every fault injected and undone",
]


def test_a_short_soak_meets_every_goal(tmp_path: Path) -> None:
    out = tmp_path / "summary.md"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "soak",
            "--duration",
            str(SHORT_S),
            "--workdir",
            str(tmp_path / "run"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.exists(), f"no summary (exit {run.returncode}):\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    summary = out.read_text()
    for section in ("## Faults", "## Requests by outcome and dialect", "## Latency", "## Jobs", "## Webhooks",
                    "## Budget", "## Memory", "## Alerts", "## Goals"):  # fmt: skip
        assert section in summary, summary
    for dialect in ("melious", "nebul", "pomelo", "nebulablock", "openai"):
        assert f" {dialect} " in summary.split("## Requests")[1].split("\n")[1], summary
    missed = [line for line in summary.splitlines() if line.startswith("- [MISSED]")]
    assert not missed, summary
    for goal in GOALS:
        assert f"- [met] {goal}:" in summary, summary
    assert run.returncode == 0, summary
