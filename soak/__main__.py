"""python -m soak [--duration 600] [--out FILE]: run the soak, print its summary and write it to FILE.

Exit status 0 when every goal is met, 1 when one is missed, 2 when a part could not start
(a missing binary says which and how to install it).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from soak.report import summary
from soak.run import CLIENTS, Options, run
from soak.topology import MissingTool


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soak", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600, help="seconds of traffic (default 600)")
    parser.add_argument("--out", type=Path, default=None, help="where the summary goes (default: in the run's folder)")
    parser.add_argument("--workdir", type=Path, default=None, help="the run's folder (default var/soak/<time>)")
    parser.add_argument("--clients", type=int, default=CLIENTS, help=f"concurrent clients (default {CLIENTS})")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path("var/soak") / time.strftime("%Y%m%dT%H%M%S")
    out = args.out or workdir / "summary.md"

    def say(line: str) -> None:
        print(f"[soak {time.strftime('%H:%M:%S')}] {line}", flush=True)

    try:
        measured = run(Options(args.duration, workdir.resolve(), out, args.clients, say))
    except MissingTool as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    text, goals = summary(measured)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text, flush=True)
    print(f"summary written to {out}")
    return 0 if all(goal.met for goal in goals) else 1


if __name__ == "__main__":
    sys.exit(main())
