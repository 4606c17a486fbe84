"""``python -m bench.dispatch_cpu``: the CPU the dialect routes' dispatch itself costs, measured in one process.

On a shared machine the CPU per request of two server processes differs from round to round by more than
the dispatch costs. This isolates it: both apps (``create_app`` with the dispatch ``litestar`` and
``direct``, the same config) in one process, the same dialect request driven through each app's ASGI
interface in alternating rounds, timed with ``time.process_time``. The request is a wrong method on a
dialect route: the pipeline answers it (request id, method check, body drained, the dialect's 405) with
no upstream call, so what differs between the two is the dispatch alone (Litestar's routing, its
middleware layers and send wrappers, against the lookup before Litestar). Prints one JSON line:
microseconds per request of each (median and min over the rounds) and the median paired difference.

    python -m bench.dispatch_cpu [--config gateway.json] [--rounds 15] [--requests 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from litestar.testing import AsyncTestClient

__all__ = ["main", "measure"]

PATH = "/v1/images/generations"
_SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "scheme": "http",
    "server": ("127.0.0.1", 8080),
    "client": ("127.0.0.1", 40000),
    "root_path": "",
    "query_string": b"",
    "headers": [(b"host", b"127.0.0.1:8080"), (b"content-length", b"0"), (b"authorization", b"Bearer x")],
}


async def _drive(app: Any, count: int) -> float:
    """CPU microseconds per request over ``count`` requests, one after the other."""
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    started = time.process_time()
    for _ in range(count):
        await app({**_SCOPE, "method": "GET", "path": PATH, "raw_path": PATH.encode()}, receive, send)
    spent = time.process_time() - started
    if set(statuses) != {405}:
        raise RuntimeError(f"expected the dialect's 405 every time, got {sorted(set(statuses))}")
    return spent * 1e6 / count


async def measure(config: Any, rounds: int, requests: int) -> dict[str, Any]:
    """Both dispatches in alternating rounds (started apps, lifespans run), and their figures."""
    from gateway.app import create_app

    apps = {dispatch: create_app(config, dispatch=dispatch) for dispatch in ("litestar", "direct")}
    clients = [AsyncTestClient(app=app) for app in apps.values()]
    for client in clients:
        await client.__aenter__()  # runs the lifespan: the gateway's shared resources exist
    try:
        per: dict[str, list[float]] = {name: [] for name in apps}
        for _ in range(rounds):
            for name, app in apps.items():
                await _drive(app, requests // 10)  # warm
                per[name].append(await _drive(app, requests))
    finally:
        for client in clients:
            await client.__aexit__(None, None, None)
    paired = [a - b for a, b in zip(per["litestar"], per["direct"], strict=True)]
    return {
        "rounds": rounds,
        "requests_per_round": requests,
        "us_per_request": {
            name: {"median": round(statistics.median(v), 1), "min": round(min(v), 1)} for name, v in per.items()
        },
        "litestar_minus_direct_us": {"median": round(statistics.median(paired), 1), "per_round": paired},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dispatch_cpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="the gateway's config file (default: the built-in config)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args(argv)
    from gateway.config import load_config

    result = asyncio.run(measure(load_config(args.config), args.rounds, args.requests))
    result["litestar_minus_direct_us"]["per_round"] = [
        round(x, 1) for x in result["litestar_minus_direct_us"]["per_round"]
    ]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
