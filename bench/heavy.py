"""``python -m bench.heavy``: the gateway's CPU and memory per heavy answer, with more requests than ``make bench``.

The heavy phases of ``make bench`` send 16 requests, too few to read CPU per request from
10 ms clock ticks on a shared machine. This sends ``--requests`` heavy answers one at a time
(closed loop, 1 client), then 16 with 4 in flight, through the gateway and straight to the
emulator, and prints one JSON line: the gateway's CPU per request, p50 against the floor's,
and the growth of its RSS over its RSS after a light warm-up.

    python -m bench.heavy [--heavy-n 4] [--requests 30]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from bench.measure import Runner, rss_tree
from bench.proxy import parse_args, servers_up

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.heavy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--heavy-n", type=int, default=4, help="images per heavy answer: 4 (16 MiB) or 2 (8 MiB)")
    parser.add_argument("--requests", type=int, default=30, help="heavy requests one at a time (default 30)")
    args = parser.parse_args(argv)
    with servers_up(parse_args(["--no-litellm", "--no-docs"])) as stack:
        runner = Runner(stack, heavy_n=args.heavy_n)
        runner.run("gateway", "light warm-up", mode="closed", concurrency=4, requests=200)
        baseline = rss_tree(stack.services["gateway"].pid)
        out: dict[str, Any] = {"heavy_n": args.heavy_n}
        for clients, requests in ((1, args.requests), (4, 16)):
            label = f"{clients} in flight"
            through = runner.run(
                "gateway", f"heavy, {label}", heavy=True, mode="closed", concurrency=clients, requests=requests
            )
            floor = runner.run(
                "floor", f"heavy, {label}", heavy=True, mode="closed", concurrency=clients, requests=requests
            )
            gateway = through.proc["gateway"]
            out[label] = {
                "requests": requests,
                "gateway_cpu_ms_per_request": round(gateway.cpu_ms_per_request, 1),
                "emulator_cpu_ms_per_request_floor": round(floor.proc["emulator"].cpu_ms_per_request, 1),
                "p50_ms": round(through.latency_ms.p50, 1),
                "floor_p50_ms": round(floor.latency_ms.p50, 1),
                "rss_growth_mib": round((gateway.rss_peak - baseline) / 2**20, 1),
                "answer_mib": round(through.answer_bytes / 2**20, 1),
            }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
