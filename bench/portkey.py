"""`make bench-portkey`: image-gateway against Portkey's open-source gateway (`@portkey-ai/gateway`).

The same work as `make bench` (one emulator at a fixed 1 ms, `POST /v1/images/generations`
with an ~8 KB base64 answer), three ways in one run: the floor (straight to the emulator),
image-gateway (Redis rate limiting on, an inbound key), and Portkey's Node.js gateway
pointed at the same emulator as a custom OpenAI host (`x-portkey-provider: openai`,
`x-portkey-custom-host`). Fixed rates with rounds interleaved, then the most each answers in
a closed loop. Results between `<!-- portkey:start -->` and `<!-- portkey:end -->` in
docs/benchmarks.md.

    make bench-portkey                 # installs the package into bench/.portkey (npm), then runs
    python -m bench.portkey --quick    # a smoke run, docs untouched
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import options
from bench.measure import Destination, Runner, machine_info, pool
from bench.report import PORTKEY, render_portkey, render_portkey_headline, write_docs
from bench.results import Pooled, PortkeyResults
from bench.stack import EMULATOR_KEY, ROOT, Stack, check_redis, free_port, log, running_stack, start_service

__all__ = ["PortkeyRunner", "main", "parse_args"]

PORTKEY_DIR = ROOT / "bench" / ".portkey"
SERVER_JS = PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
PATHS = ("floor", "gateway", "portkey")


@dataclass
class PortkeyRunner(Runner):
    """A `Runner` with a third path: Portkey's gateway in front of the light emulator."""

    def target(self, path: str, heavy: bool) -> Destination:
        if path != "portkey":
            return super().target(path, heavy)
        emulator = self.stack.services["emulator"]
        headers = {
            "Authorization": f"Bearer {EMULATOR_KEY}",
            "x-portkey-provider": "openai",
            "x-portkey-custom-host": emulator.base_url + "/v1",
        }
        portkey = self.stack.services["portkey"]
        return Destination(portkey.base_url, headers, {"portkey": portkey.pid})


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.portkey", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--rates", type=lambda text: [float(x) for x in text.split(",")], default=[200.0, 50.0])
    add("--node", default="node", help="the Node.js to run Portkey with")
    options.add_common_arguments(parser, rounds=3, duration=5.0)
    args = options.finish_arguments(parser.parse_args(argv))
    if args.quick:
        args.rates = args.rates[:1]
    return args


def portkey_version() -> str:
    package = SERVER_JS.parents[1] / "package.json"
    return str(json.loads(package.read_text()).get("version", "unknown"))


def node_version(node: str) -> str:
    done = subprocess.run([node, "--version"], capture_output=True, text=True, check=False, timeout=30)
    return done.stdout.strip() or "unknown"


def start_portkey(stack: Stack, node: str) -> None:
    port = free_port()
    command = [node, str(SERVER_JS), f"--port={port}", "--headless"]
    env = {"NODE_ENV": "production"}
    stack.add(start_service("portkey", command, f"http://127.0.0.1:{port}", stack.workdir, env), "/", 60)


def fixed_rate(runner: Runner, rate: float, args: argparse.Namespace) -> dict[str, Pooled]:
    rounds = runner.rounds(PATHS, f"{rate:g}/s", args.rounds, rate=rate, duration=args.duration)
    return {path: pool([r[path] for r in rounds]) for path in PATHS}


def measure(stack: Stack, args: argparse.Namespace) -> PortkeyResults:
    start_portkey(stack, args.node)
    runner = PortkeyRunner(stack)
    runner.warm_up(PATHS)
    fixed = {f"{rate:g}": fixed_rate(runner, rate, args) for rate in args.rates}
    saturation = {
        path: runner.closed_loop(path, "most answered (closed loop)", args.saturation_connections, args.duration)
        for path in ("gateway", "portkey")
    }
    return PortkeyResults(
        fixed=fixed, saturation=saturation, portkey_version=portkey_version(), node_version=node_version(args.node)
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not SERVER_JS.exists():
        raise SystemExit(f"Portkey's gateway is not installed at {PORTKEY_DIR}: run `make bench-portkey`")
    check_redis(args.redis_url)
    machine = machine_info()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    stack_options = options.stack_options(args)
    with running_stack(stack_options) as stack:
        results = measure(stack, args)
    block = render_portkey(results, args, machine, when)
    print(block)
    if not args.no_docs:
        headline = render_portkey_headline(results, machine, when, stack_options.upstream_transport)
        write_docs(Path(args.docs), block, PORTKEY, headline)
        log(f"results written into {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
