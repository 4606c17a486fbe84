"""`make bench`: what image-gateway adds to a request, against the floor and LiteLLM's proxy.

One run measures the same work three ways, on loopback, with the load generator
(`bench.loadgen`) in its own process for every phase:

- floor: the client straight to a provider emulator (Melious, fixed 1 ms delay);
- gateway: through image-gateway (one uvicorn worker, its own process; inbound key,
  Redis rate limiting on: the real path);
- litellm: through LiteLLM's proxy (its own virtualenv), pointed at the same emulator on
  its OpenAI-compatible route.

Figures: added latency p50/p95/p99 at fixed rates (interleaved rounds), the highest rate
one worker carries with p99 added latency under a bound, the most it answers at any
latency (closed loop), CPU per request, peak memory, and the same with heavy answers
(n=4 at 1024x1024, incompressible PNGs). The results go to stdout and, between
`<!-- proxy:start -->` and `<!-- proxy:end -->`, into docs/benchmarks.md.

    python -m bench.proxy                  # the full run, a few minutes
    python -m bench.proxy --quick          # a smoke run (seconds per phase), docs untouched
    python -m bench.proxy --litellm-python /path/to/venv/bin/python --py-spy
    python -m bench.proxy --compare-dispatch   # also the dialect routes' two dispatches (bench/dispatch.py)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgspec

from adapters.upstream import DEFAULT_TRANSPORT, TRANSPORTS
from bench.assess import assess
from bench.dispatch import DISPATCH, DispatchComparison, compare, render_dispatch, render_dispatch_headline
from bench.measure import machine_info, measure_idle, rss_tree
from bench.phases import Plan, ProxyBench, cpu_memory, loadgen_health, log_lines_per_request, machine_shares
from bench.report import DOCS, render, render_headline, write_docs
from bench.results import Machine, Meta, ProxyResults, dumps
from bench.stack import (
    ROOT,
    Stack,
    StackOptions,
    check_redis,
    litellm_stack,
    litellm_version,
    log,
    resolve_litellm,
    running_stack,
)
from bench.tree import TREE, before_tree, describe, render_tree

__all__ = ["main", "parse_args"]

DEFAULT_LITELLM_PYTHON = "bench/.venv-litellm/bin/python"


# --------------------------------------------------------------------------- options


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.proxy", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--duration", type=float, default=5.0, help="seconds of sending per measured phase (default 5)")
    add("--rounds", type=int, default=3, help="interleaved floor/gateway/LiteLLM rounds per fixed rate (default 3)")
    add("--rates", type=_floats, default=[200.0, 50.0], help="fixed rates, req/s (default 200,50)")
    add("--steps", type=_floats, default=[200, 400, 600, 800, 1000, 1200, 1500, 2000], help="gateway rate steps")
    add("--litellm-steps", type=_floats, default=[25, 50, 100, 150, 200], help="LiteLLM rate steps (capped)")
    add("--bound-ms", type=float, default=10.0, help="p99 added latency bound for the rate steps (default 10)")
    add("--saturation-connections", type=int, default=32, help="closed-loop clients for the most answered")
    add("--emulator-delay-ms", type=float, default=1.0, help="the emulator's fixed latency (default 1 ms)")
    add("--heavy-rate", type=float, default=2.0, help="heavy answers: open-loop rate (default 2 req/s)")
    add("--heavy-duration", type=float, default=8.0, help="heavy answers: seconds per latency phase (default 8)")
    add("--heavy-concurrency", type=_ints, default=[1, 4], help="heavy answers: in-flight for memory (default 1,4)")
    add("--heavy-requests-per-client", type=int, default=4, help="heavy memory phases: requests per client")
    add("--heavy-n", type=int, default=4, help="images per heavy answer: 4 (16 MiB, default) or 2 (8 MiB)")
    add("--litellm-python", default=DEFAULT_LITELLM_PYTHON, help=f"LiteLLM's python (default {DEFAULT_LITELLM_PYTHON})")
    add("--no-litellm", action="store_true", help="leave LiteLLM out")
    add("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    add("--py-spy", action="store_true", help="also profile the gateway with py-spy, in phases of their own")
    add("--profile-rates", type=_floats, default=[200.0, 1000.0], help="rates of the py-spy phases (200,1000)")
    add("--quick", action="store_true", help="a smoke run: short phases, few steps, docs untouched")
    add("--docs", default=str(DOCS), help="the Markdown file to write the results into")
    add("--no-docs", action="store_true", help="do not write the docs")
    add("--json", dest="json_out", help="also write every result as JSON here")
    add("--upstream-transport", default=DEFAULT_TRANSPORT, choices=TRANSPORTS, help="the gateway's upstream client")
    add("--keep-logs", action="store_true", help="keep the servers' logs (their directory is printed)")
    add("--compare-dispatch", action="store_true", help="also: Litestar's routing of the dialect routes against "
        "the direct dispatch, side by side (bench/dispatch.py)")  # fmt: skip
    add("--compare-tree", metavar="DIR", help="also: this checkout's gateway against the one in DIR (another "
        "checkout, e.g. `git worktree add DIR <commit>`), side by side (bench/tree.py)")  # fmt: skip
    add("--compare-only", action="store_true", help="with --compare-dispatch or --compare-tree: only the comparisons "
        "(the run's own tables are not measured, written or printed)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.compare_only and not (args.compare_dispatch or args.compare_tree):
        parser.error("--compare-only goes with --compare-dispatch or --compare-tree")
    if args.quick:
        args.duration = min(args.duration, 1.5)
        args.rounds = 1
        args.rates = args.rates[:1]
        args.steps = args.steps[:2]
        args.litellm_steps = args.litellm_steps[1:2]
        args.heavy_duration = 2.0
        args.heavy_concurrency = args.heavy_concurrency[-1:]
        args.heavy_requests_per_client = 2
        args.no_docs = args.no_docs or "--docs" not in (argv or sys.argv)
    return args


def plan_of(args: argparse.Namespace) -> Plan:
    """The phases the options ask for."""
    given = vars(args)
    return msgspec.convert({name: given[name] for name in Plan.__struct_fields__}, Plan)


def stack_options(args: argparse.Namespace) -> StackOptions:
    """The servers the options ask for (LiteLLM's python already resolved, or None)."""
    return StackOptions(
        redis_url=args.redis_url,
        emulator_delay_ms=args.emulator_delay_ms,
        upstream_transport=args.upstream_transport,
        litellm_python=None if args.no_litellm else resolve_litellm(args.litellm_python),
        keep_logs=args.keep_logs,
    )


def meta_of(args: argparse.Namespace, argv: Sequence[str] | None, stack: Stack) -> Meta:
    """How this run was made; the machine's shares and the elapsed time are filled in at the end."""
    python = stack.options.litellm_python
    return Meta(
        command="python -m bench.proxy" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
        duration=args.duration,
        rounds=args.rounds,
        bound_ms=args.bound_ms,
        emulator_delay_ms=args.emulator_delay_ms,
        heavy_rate=args.heavy_rate,
        saturation_connections=args.saturation_connections,
        litellm_missing="left out (--no-litellm)" if python is None else "",
        quick=args.quick,
        upstream_transport=args.upstream_transport,
        litellm_version=litellm_version(python) if python else "",
        litellm_stack=litellm_stack(python) if python else {},
    )


# --------------------------------------------------------------------------- the run


def measure(bench: ProxyBench, meta: Meta, machine: Machine, py_spy: bool, idle_s: float) -> ProxyResults:
    """Every phase of the run, in order, and the tables derived from them."""
    stack = bench.stack
    bench.warm_up(bench.paths)
    start_rss = {p: float(rss_tree(stack.services[p].pid)) for p in bench.proxies}
    idle_cpu = measure_idle(stack, bench.proxies, idle_s)
    fixed = bench.fixed_rates()
    steps = bench.steps()
    heavy = bench.heavy()
    profiles = bench.profiles() if py_spy else []
    meta = msgspec.structs.replace(
        meta, log_lines_per_request=log_lines_per_request(stack.services["gateway"].log_path, bench.phases)
    )
    return ProxyResults(
        meta=meta,
        machine=machine,
        fixed=fixed,
        steps=steps,
        heavy=heavy,
        profiles=profiles,
        cpu_memory=cpu_memory(fixed, steps, bench.phases, start_rss, idle_cpu),
        loadgen=loadgen_health(bench.phases, steps),
        phases=[phase.compact() for phase in bench.phases],
    )


def finish(results: ProxyResults, started: float) -> ProxyResults:
    """The machine's shares, the elapsed time, and the assessment."""
    busy, others = machine_shares(results.phases)
    meta = msgspec.structs.replace(
        results.meta, busy_cores_mean=busy, others_cores_mean=others, elapsed_s=time.monotonic() - started
    )
    results = msgspec.structs.replace(results, meta=meta)
    judged = assess(results)
    return msgspec.structs.replace(results, targets=judged.targets, obstacles=judged.obstacles)


def publish(results: ProxyResults, args: argparse.Namespace) -> None:
    """stdout, and the JSON and the docs where asked."""
    block = render(results)
    print(block)
    if args.json_out:
        Path(args.json_out).write_text(dumps(results, indent=1))
        log(f"results as JSON in {args.json_out}")
    if not args.no_docs:
        write_docs(Path(args.docs), block, headline=render_headline(results))
        log(f"results written into {args.docs}")


def publish_dispatch(result: DispatchComparison, machine: Machine, command: str, args: argparse.Namespace) -> None:
    """The dispatch comparison: stdout, and its own section of the docs where asked."""
    block = render_dispatch(result, machine, command)
    print(block)
    if not args.no_docs:
        headline = render_dispatch_headline(result, machine, command, args.upstream_transport)
        write_docs(Path(args.docs), block, DISPATCH, headline)
        log(f"the dispatch comparison written into {args.docs}")


@contextlib.contextmanager
def servers_up(args: argparse.Namespace) -> Iterator[Stack]:
    """The stack the options ask for, started, with where each server listens logged."""
    with running_stack(stack_options(args)) as stack:
        log("servers up: " + ", ".join(f"{n} {s.base_url} (pid {s.pid})" for n, s in stack.services.items()))
        yield stack


def publish_tree(result: DispatchComparison, machine: Machine, command: str, args: argparse.Namespace) -> None:
    """The before/after comparison: stdout, and its own section of the docs where asked."""
    block = render_tree(result, machine, command, after=describe(ROOT), before=describe(args.compare_tree))
    print(block)
    if not args.no_docs:
        write_docs(Path(args.docs), block, TREE)
        log(f"the before/after comparison written into {args.docs}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check_redis(args.redis_url)
    before = before_tree(args.compare_tree) if args.compare_tree else None
    clock = time.monotonic()
    machine = machine_info()
    log(f"machine: {machine.cpu_model}, {machine.cores} cores, load {machine.loadavg_start[0]:.2f}")
    dispatch: DispatchComparison | None = None
    tree: DispatchComparison | None = None
    results: ProxyResults | None = None
    with servers_up(args) as stack:
        bench = ProxyBench(stack, plan=plan_of(args), heavy_n=args.heavy_n)
        meta = meta_of(args, argv, stack)
        if not args.compare_only:
            results = measure(bench, meta, machine, args.py_spy, 1.0 if args.quick else 5.0)
            results = finish(results, clock)
        if args.compare_dispatch:
            dispatch = compare(stack, bench.plan, args.heavy_n)
        if before is not None:
            tree = compare(stack, bench.plan, args.heavy_n, before, in_process=False)
    if results is not None:
        publish(results, args)
    if dispatch is not None:
        publish_dispatch(dispatch, machine, meta.command, args)
    if tree is not None:
        publish_tree(tree, machine, meta.command, args)
    log(f"done in {(time.monotonic() - clock) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
