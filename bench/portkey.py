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
from pathlib import Path
from typing import Any

from bench import servers
from bench.proxy import (
    EMULATOR_KEY,
    ROOT,
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

START, END = "<!-- portkey:start -->", "<!-- portkey:end -->"
PORTKEY_DIR = ROOT / "bench" / ".portkey"
SERVER_JS = PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
PATHS = ("floor", "gateway", "portkey")


class PortkeyBench(Bench):
    """``Bench`` with a third path: Portkey's gateway in front of the light emulator."""

    def target(self, path: str, heavy: bool) -> tuple[str, dict[str, str], dict[str, int]]:
        if path != "portkey":
            return super().target(path, heavy)
        emulator = self.stack.services["emulator"]
        headers = {
            "Authorization": f"Bearer {EMULATOR_KEY}",
            "x-portkey-provider": "openai",
            "x-portkey-custom-host": emulator.base_url + "/v1",
        }
        return self.stack.services["portkey"].base_url, headers, {"portkey": self.stack.services["portkey"].pid}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.portkey", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--rates", type=lambda text: [float(x) for x in text.split(",")], default=[200.0, 50.0])
    add("--node", default="node", help="the Node.js to run Portkey with")
    servers.add_common_arguments(parser, rounds=3, duration=5.0)
    args = servers.finish_arguments(parser.parse_args(argv))
    if args.quick:
        args.rates = args.rates[:1]
    return args


def portkey_version() -> str:
    package = SERVER_JS.parents[1] / "package.json"
    return str(json.loads(package.read_text()).get("version", "unknown"))


def node_version(node: str) -> str:
    done = subprocess.run([node, "--version"], capture_output=True, text=True, check=False, timeout=30)
    return done.stdout.strip() or "unknown"


def render(results: dict[str, Any], args: argparse.Namespace, machine: dict[str, Any], when: str) -> str:
    lines = [
        "## Against Portkey's gateway (`make bench-portkey`)",
        "",
        f"Run {when} on {machine['cpu_model']}, {machine['cores']} cores; `python -m bench.portkey`: "
        f"`@portkey-ai/gateway` {results['portkey_version']} on Node.js {results['node_version']} (one process, "
        "headless, the emulator as its custom OpenAI host) against image-gateway as in `make bench` (one uvicorn "
        f"worker, Redis rate limiting on, an inbound key); emulator at {args.emulator_delay_ms:g} ms; "
        f"{args.rounds} interleaved rounds of {args.duration:g} s per rate. Portkey checks no key and limits "
        "nothing here: it does less per request than the gateway does.",
        "",
        "| rate | path | p50 | p99 | added p50 | added p99 | CPU per request | errors |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for rate, pooled in results["fixed"].items():
        floor = pooled["floor"]["latency_ms"]
        for path in PATHS:
            lat = pooled[path]["latency_ms"]
            proc = pooled[path]["proc"]
            own = "emulator" if path == "floor" else path
            added = ("-", "-") if path == "floor" else (ms(lat["p50"] - floor["p50"]), ms(lat["p99"] - floor["p99"]))
            lines.append(
                f"| {rate}/s | {path} | {ms(lat['p50'])} | {ms(lat['p99'])} | {added[0]} | {added[1]} | "
                f"{ms(proc[own]['cpu_ms_per_request'])} ms | {sum(pooled[path]['errors'].values())} |"
            )
    lines += ["", "Latencies in ms."]
    for rate, pooled in results["fixed"].items():
        floor = pooled["floor"]["latency_ms"]["p50"]
        ours = pooled["gateway"]["latency_ms"]["p50"] - floor
        theirs = pooled["portkey"]["latency_ms"]["p50"] - floor
        lines.append(
            f"- {rate}/s: Portkey adds {ms(theirs)} ms at p50, the gateway {ms(ours)} ms: "
            f"{theirs / ours:.1f}x the gateway's."
            if ours > 0
            else f"- {rate}/s: the gateway adds nothing measurable."
        )
    sat = results["saturation"]
    lines.append(
        f"- Most answered at any latency ({args.saturation_connections} closed-loop clients): gateway "
        f"{sat['gateway']['achieved_rate']:.0f}/s (p50 {ms(sat['gateway']['latency_ms']['p50'])} ms), Portkey "
        f"{sat['portkey']['achieved_rate']:.0f}/s (p50 {ms(sat['portkey']['latency_ms']['p50'])} ms)."
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not SERVER_JS.exists():
        raise SystemExit(f"Portkey's gateway is not installed at {PORTKEY_DIR}: run `make bench-portkey`")
    check_redis(args.redis_url)
    machine = machine_info()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with running_stack(args) as stack:
        port = free_port()
        command = [args.node, str(SERVER_JS), f"--port={port}", "--headless"]
        service = start_service(
            "portkey", command, f"http://127.0.0.1:{port}", stack.workdir, {"NODE_ENV": "production"}
        )
        stack.services["portkey"] = service
        service.wait_ready("/", 60)
        bench = PortkeyBench(args, stack)
        for path in PATHS:
            bench.run(path, "warm-up", rate=100.0, duration=1.0, keep_latencies=False)
        fixed: dict[str, Any] = {}
        for rate in args.rates:
            rounds = [
                {
                    path: bench.run(path, f"{rate:g}/s round {i + 1}", rate=rate, duration=args.duration)
                    for path in PATHS
                }
                for i in range(args.rounds)
            ]
            fixed[f"{rate:g}"] = {path: pool([r[path] for r in rounds]) for path in PATHS}
        saturation = {
            path: bench.run(
                path,
                "most answered (closed loop)",
                mode="closed",
                concurrency=args.saturation_connections,
                duration=args.duration,
                requests=0,
            )
            for path in ("gateway", "portkey")
        }
    results = {
        "fixed": fixed,
        "saturation": saturation,
        "portkey_version": portkey_version(),
        "node_version": node_version(args.node),
    }
    block = render(results, args, machine, when)
    print(block)
    if not args.no_docs:
        servers.write_docs(Path(args.docs), block, START, END)
        log(f"results written into {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
