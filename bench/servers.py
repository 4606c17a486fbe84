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
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench import options
from bench.measure import Runner, machine_info, pool
from bench.report import SERVERS, render_servers, render_servers_headline, write_docs
from bench.results import ServerRow
from bench.stack import Stack, check_redis, free_port, log, running_stack, start_service

__all__ = ["main", "parse_args", "variants"]


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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.servers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="fixed rate, req/s (default 200)")
    options.add_common_arguments(parser, rounds=2, duration=4.0)
    return options.finish_arguments(parser.parse_args(argv))


def measure(runner: Runner, label: str, args: argparse.Namespace) -> ServerRow:
    """One way of serving: rounds at the fixed rate against the floor, then the closed loop."""
    paths = ("floor", "gateway")
    rounds = runner.rounds(paths, f"{label}: {args.rate:g}/s", args.rounds, rate=args.rate, duration=args.duration)
    pooled = {path: pool([r[path] for r in rounds]) for path in paths}
    saturation = runner.closed_loop("gateway", f"{label}: closed loop", args.saturation_connections, args.duration)
    more = pooled["gateway"].latency_ms.minus(pooled["floor"].latency_ms)
    return ServerRow(
        label=label,
        added_p50=more.p50,
        added_p99=more.p99,
        errors=sum(pooled["gateway"].errors.values()),
        cpu_ms=pooled["gateway"].cpu_ms("gateway"),
        saturation=saturation.achieved_rate,
        saturation_p50=saturation.latency_ms.p50,
        saturation_cpu_ms=saturation.cpu_ms("gateway"),
    )


def measure_variant(
    stack: Stack, runner: Runner, variant: tuple[str, list[str], dict[str, str]], args: argparse.Namespace
) -> ServerRow:
    """Serve the gateway this way in place of the stack's own, measure it, stop it."""
    label, command, env = variant
    port = int(command[command.index("--port") + 1])
    default = stack.services["gateway"]
    service = start_service("gateway-variant", command, f"http://127.0.0.1:{port}", stack.workdir, env)
    try:
        service.wait_ready("/ready", 60)
        stack.services["gateway"] = service
        runner.warm_up(["gateway"], f"{label}: warm-up")
        return measure(runner, label, args)
    finally:
        stack.services["gateway"] = default
        service.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check_redis(args.redis_url)
    machine = machine_info()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    stack_options = options.stack_options(args)
    with running_stack(stack_options) as stack:
        runner = Runner(stack)
        config = stack.workdir / "gateway.json"
        rows = [measure_variant(stack, runner, variant, args) for variant in variants(config, free_port())]
    block = render_servers(rows, args, machine, when)
    print(block)
    if not args.no_docs:
        headline = render_servers_headline(rows, machine, when, stack_options.upstream_transport)
        write_docs(Path(args.docs), block, SERVERS, headline)
        log(f"results written into {args.docs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
