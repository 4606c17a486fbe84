"""`make bench-servers`: which ASGI server, event loop and process count serve the gateway best.

The same gateway app and config as `make bench` (one emulator at a fixed 1 ms, Redis rate
limiting on, an inbound key), served four ways in turn:

- uvicorn, uvloop + httptools, one process (what `image-gateway serve` runs);
- uvicorn, asyncio + h11 (uvicorn's pure-Python defaults), one process;
- Granian (Rust HTTP server, its ASGI interface, uvloop), one worker;
- uvicorn, uvloop + httptools, two processes (`image-gateway serve --workers 2`).

For each: the added latency at a fixed rate (rounds interleaved with the floor), the CPU per
request of the whole process tree, and the most answered at any latency (closed loop). The
results go to stdout and, between `<!-- servers:start -->` and `<!-- servers:end -->`, into
docs/benchmarks.md.

    python -m bench.servers            # about two minutes
    python -m bench.servers --quick    # a smoke run, docs untouched
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.proxy import (
    DOCS,
    Bench,
    check_redis,
    free_port,
    log,
    machine_info,
    ms,
    pool,
    running_stack,
    start_service,
)

START, END = "<!-- servers:start -->", "<!-- servers:end -->"


def variants(config: Path, port: int) -> list[tuple[str, list[str], dict[str, str]]]:
    """(label, command, environment) of each way to serve the gateway, all on ``port``."""
    cli = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)]
    env = {"IMAGE_GATEWAY_CONFIG": str(config)}
    factory = "gateway.app:create_app_from_env"
    found: list[tuple[str, list[str], dict[str, str]]] = [
        ("uvicorn, uvloop + httptools, 1 process", cli, {}),
        (
            "uvicorn, asyncio + h11, 1 process",
            [sys.executable, "-m", "uvicorn", factory, "--factory", "--port", str(port), "--loop", "asyncio",
             "--http", "h11", "--log-level", "warning", "--no-access-log"],
            env,
        ),
    ]  # fmt: skip
    granian = shutil.which("granian") or str(Path(sys.executable).parent / "granian")
    if importlib.util.find_spec("granian") is not None and Path(granian).exists():
        found.append(
            (
                "Granian, uvloop, 1 worker",
                [granian, "--interface", "asgi", "--factory", "--port", str(port), "--workers", "1",
                 "--loop", "uvloop", "--log-level", "warning", "--no-ws", factory],
                env,
            )
        )  # fmt: skip
    found.append(("uvicorn, uvloop + httptools, 2 processes", [*cli, "--workers", "2"], {}))
    return found


def add_common_arguments(parser: argparse.ArgumentParser, rounds: int, duration: float) -> None:
    """The options every side benchmark shares (this one and bench.portkey)."""
    add = parser.add_argument
    add("--duration", type=float, default=duration, help=f"seconds per phase (default {duration:g})")
    add("--rounds", type=int, default=rounds, help=f"interleaved rounds per rate (default {rounds})")
    add("--saturation-connections", type=int, default=32, help="closed-loop clients (default 32)")
    add("--emulator-delay-ms", type=float, default=1.0)
    add("--redis-url", default="redis://127.0.0.1:6379/0")
    add("--quick", action="store_true", help="short phases, docs untouched")
    add("--no-docs", action="store_true")
    add("--docs", default=str(DOCS))


def finish_arguments(args: argparse.Namespace) -> argparse.Namespace:
    """What bench.proxy's Stack and Bench read, for a run without LiteLLM; --quick shortens the phases."""
    args.no_litellm, args.keep_logs, args.upstream_transport = True, False, "aiohttp"
    if args.quick:
        args.duration, args.rounds, args.no_docs = 1.0, 1, True
    return args


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.servers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="fixed rate, req/s (default 200)")
    add_common_arguments(parser, rounds=2, duration=4.0)
    return finish_arguments(parser.parse_args(argv))


def measure(bench: Bench, label: str, args: argparse.Namespace) -> dict[str, Any]:
    rounds = [
        {
            path: bench.run(path, f"{label}: {args.rate:g}/s round {index + 1}", rate=args.rate, duration=args.duration)
            for path in ("floor", "gateway")
        }
        for index in range(args.rounds)
    ]
    pooled = {path: pool([r[path] for r in rounds]) for path in ("floor", "gateway")}
    saturation = bench.run(
        "gateway",
        f"{label}: closed loop",
        mode="closed",
        concurrency=args.saturation_connections,
        duration=args.duration,
        requests=0,
    )
    floor, gateway = pooled["floor"]["latency_ms"], pooled["gateway"]["latency_ms"]
    return {
        "label": label,
        "added_p50": gateway["p50"] - floor["p50"],
        "added_p99": gateway["p99"] - floor["p99"],
        "errors": sum(pooled["gateway"]["errors"].values()),
        "cpu_ms": pooled["gateway"]["proc"]["gateway"]["cpu_ms_per_request"],
        "saturation": saturation["achieved_rate"],
        "saturation_p50": saturation["latency_ms"]["p50"],
        "saturation_cpu_ms": saturation["proc"]["gateway"]["cpu_ms_per_request"],
    }


def render(rows: list[dict[str, Any]], args: argparse.Namespace, machine: dict[str, Any], when: str) -> str:
    lines = [
        "## ASGI server, event loop and processes (`make bench-servers`)",
        "",
        f"Run {when} on {machine['cpu_model']}, {machine['cores']} cores; `python -m bench.servers`: the gateway of "
        f"`make bench` (Redis rate limiting on, emulator at {args.emulator_delay_ms:g} ms) served each way in turn; "
        f"{args.rounds} rounds of {args.duration:g} s at {args.rate:g} req/s interleaved with the floor, then "
        f"{args.saturation_connections} closed-loop clients for {args.duration:g} s. CPU is the whole process tree's "
        "(both workers, and the parent, for two processes).",
        "",
        f"| served by | added p50 at {args.rate:g}/s | added p99 | CPU per request | most answered "
        "(closed loop) | its p50 | CPU per request there | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['label']} | {ms(row['added_p50'])} ms | {ms(row['added_p99'])} ms | {ms(row['cpu_ms'])} ms | "
            f"{row['saturation']:.0f}/s | {ms(row['saturation_p50'])} ms | {ms(row['saturation_cpu_ms'])} ms | "
            f"{row['errors']} |"
        )
    best = min(rows, key=lambda r: r["cpu_ms"] if not math.isnan(r["cpu_ms"]) else math.inf)
    lines += ["", f"Least CPU per request at {args.rate:g} req/s: {best['label']}."]
    return "\n".join(lines)


def write_docs(path: Path, block: str, start: str = START, end: str = END) -> None:
    """Replace the section between ``start`` and ``end`` (or add it), leaving the rest of the file alone."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"{start}\n{block.rstrip()}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check_redis(args.redis_url)
    machine = machine_info()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = []
    with running_stack(args) as stack:
        default = stack.services["gateway"]
        config = stack.workdir / "gateway.json"
        bench = Bench(args, stack)
        for label, command, env in variants(config, free_port()):
            port = int(command[command.index("--port") + 1])
            service = start_service("gateway-variant", command, f"http://127.0.0.1:{port}", stack.workdir, env)
            try:
                service.wait_ready("/ready", 60)
                stack.services["gateway"] = service
                bench.run("gateway", f"{label}: warm-up", rate=100.0, duration=1.0, keep_latencies=False)
                rows.append(measure(bench, label, args))
            finally:
                stack.services["gateway"] = default
                service.stop()
    block = render(rows, args, machine, when)
    print(block)
    if not args.no_docs:
        write_docs(Path(args.docs), block)
        log(f"results written into {args.docs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
