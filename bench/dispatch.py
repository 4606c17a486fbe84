"""`make bench` with ``--compare-dispatch``: the dialect routes served as Litestar route handlers against the
dispatch that ran before Litestar, side by side in the same run.

The stack's gateway serves the dialect routes through Litestar's routing (the default); a second
gateway process, the same config and code, runs with ``IMAGE_GATEWAY_DISPATCH=direct`` (every dialect
path handed to the request pipeline before Litestar routes anything). Each comparison is rounds
interleaved between the two (a drift of the shared machine hits both alike): light requests at the
first fixed rate (with the floor), closed-loop clients, and heavy answers at the heavy rate; then
the dispatch's own CPU, both apps in one process (``bench.dispatch_cpu``). The figure that decides is
the CPU the Litestar handlers add per light request: they stay unless it is more than ``THRESHOLD_MS``.
It is read in process: on a shared 2-core machine the two server processes' CPU per request moves from
round to round by several times the threshold, while the requests differ by their dispatch alone.
The section goes between `<!-- dispatch:start -->` and `<!-- dispatch:end -->` in docs/benchmarks.md,
its row of "Today's figures" between `<!-- dispatch-headline:start -->` and `<!-- dispatch-headline:end -->`.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec

from bench.measure import Runner, pool
from bench.phases import Plan
from bench.report import Markers, headline_table, machine_cell, ms
from bench.results import Machine, Phase, Pooled
from bench.stack import ROOT, Stack, free_port, log, start_service
from gateway.app import DISPATCH_ENV

__all__ = [
    "DIRECT_GATEWAY",
    "DISPATCH",
    "Contender",
    "DispatchComparison",
    "compare",
    "render_dispatch",
    "render_dispatch_headline",
]

DISPATCH = Markers.named("dispatch")
LITESTAR = "gateway"  # the stack's own gateway: Litestar's route handlers (the default dispatch)
DIRECT = "gateway-direct"
THRESHOLD_MS = 0.05  # CPU per light request the Litestar handlers may add
LABELS = {LITESTAR: "Litestar route handlers (default)", DIRECT: "direct dispatch before Litestar"}


class DispatchRow(msgspec.Struct, kw_only=True):
    """One dispatch: its figures over the pooled rounds of each comparison."""

    path: str
    light_added_p50: float
    light_added_p99: float
    light_cpu_ms: float
    light_cpu_ms_rounds: list[float]
    closed_rate: float
    closed_p50: float
    closed_cpu_ms: float
    closed_cpu_ms_rounds: list[float]
    heavy_p50: float
    heavy_p99: float
    heavy_cpu_ms: float
    errors: int


class Contender(msgspec.Struct, frozen=True, kw_only=True):
    """The second gateway of a side-by-side comparison: the stack's config, run another way."""

    name: str  # its service's name in the stack (and its rows' ``path``)
    env: dict[str, str] = {}  # added to its environment
    tree: str | None = None  # another checkout to run it from (its cwd and PYTHONPATH); None: this one


DIRECT_GATEWAY = Contender(name=DIRECT, env={DISPATCH_ENV: "direct"})


class DispatchComparison(msgspec.Struct, kw_only=True):
    rate: float
    light_rounds: int
    rounds: int
    duration: float
    heavy_rate: float
    heavy_duration: float
    clients: int
    rows: list[DispatchRow]
    in_process: dict[str, Any]  # bench.dispatch_cpu's figures
    other: str = DIRECT  # the second gateway's rows' path

    def paired_light_extra_ms(self) -> float:
        """The median over the light rounds of (the stack's gateway's CPU per request - the other's), round by round."""
        return self.paired_extra_ms("light")

    def paired_extra_ms(self, which: str) -> float:
        """The median over ``which`` rounds (light, closed) of the stack's gateway's CPU per request - the other's."""
        mine, theirs = self.row(LITESTAR), self.row(self.other)
        attr = f"{which}_cpu_ms_rounds"
        pairs = zip(getattr(mine, attr), getattr(theirs, attr), strict=True)
        return statistics.median(a - b for a, b in pairs)

    def row(self, path: str) -> DispatchRow:
        return next(row for row in self.rows if row.path == path)

    @property
    def light_extra_ms(self) -> float:
        """CPU per light request the Litestar handlers add over the direct dispatch (negative: they save)."""
        return self.row(LITESTAR).light_cpu_ms - self.row(self.other).light_cpu_ms

    @property
    def deciding_ms(self) -> float:
        """The added CPU per light request the rule reads: in process when measured, else the servers' pooled."""
        if self.in_process:
            return float(self.in_process["litestar_minus_direct_us"]["median"]) / 1000
        return self.light_extra_ms

    @property
    def adopted(self) -> bool:
        return not self.deciding_ms > THRESHOLD_MS


@contextlib.contextmanager
def second_gateway(stack: Stack, contender: Contender) -> Iterator[None]:
    """A second gateway, the stack's config, run as ``contender`` says; stopped on the way out."""
    port = free_port()
    config = stack.workdir / "gateway.json"
    command = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)]
    env = dict(contender.env)
    if contender.tree is not None:  # the other checkout's packages first (this one's are installed editable)
        env["PYTHONPATH"] = contender.tree
    url = f"http://127.0.0.1:{port}"
    service = start_service(contender.name, command, url, stack.workdir, env, cwd=contender.tree)
    try:
        service.wait_ready("/ready", 60)
        stack.services[contender.name] = service
        yield
    finally:
        stack.services.pop(contender.name, None)
        service.stop()


def compare(
    stack: Stack, plan: Plan, heavy_n: int, contender: Contender = DIRECT_GATEWAY, in_process: bool = True
) -> DispatchComparison:
    """Every comparison, rounds interleaved between the stack's gateway and ``contender`` (a runner of its own:
    the run's other tables never see these phases); ``in_process`` adds the dispatch's own CPU."""
    runner = Runner(stack, heavy_n=heavy_n)
    rate, rounds = plan.rates[0], max(plan.rounds, 2)
    light_rounds = 2 * rounds  # the figure that decides: twice the rounds
    paths = (LITESTAR, contender.name)
    with second_gateway(stack, contender):
        log(f"side by side: {LITESTAR} (this checkout) against {contender.name} ({contender})")
        runner.warm_up(paths, "side by side: warm-up")
        light = runner.rounds(
            ("floor", *paths), f"side by side {rate:g}/s", light_rounds, rate=rate, duration=plan.duration
        )
        closed = [
            {
                path: runner.closed_loop(path, f"side by side closed round {n + 1}", plan.saturation_connections,
                                         plan.duration)
                for path in paths
            }
            for n in range(rounds)
        ]  # fmt: skip
        heavy = runner.rounds(
            paths, "side by side heavy", rounds, heavy=True, rate=plan.heavy_rate, duration=plan.heavy_duration
        )
    floor = pool([r["floor"] for r in light])
    rows = [_row(path, light, closed, heavy, floor) for path in paths]
    return DispatchComparison(
        rate=rate,
        light_rounds=light_rounds,
        rounds=rounds,
        duration=plan.duration,
        heavy_rate=plan.heavy_rate,
        heavy_duration=plan.heavy_duration,
        clients=plan.saturation_connections,
        rows=rows,
        in_process=dispatch_cpu(stack) if in_process else {},
        other=contender.name,
    )


def dispatch_cpu(stack: Stack) -> dict[str, Any]:
    """``python -m bench.dispatch_cpu`` on the stack's config, in a process of its own."""
    log("dispatch: the dispatch's own CPU, in process (bench.dispatch_cpu)")
    out = subprocess.run(
        [sys.executable, "-m", "bench.dispatch_cpu", "--config", str(stack.workdir / "gateway.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"bench.dispatch_cpu failed:\n{out.stderr[-4000:]}")
    found: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    log(f"dispatch: in process {found}")
    return found


def _row(
    path: str,
    light: Sequence[dict[str, Phase]],
    closed: Sequence[dict[str, Phase]],
    heavy: Sequence[dict[str, Phase]],
    floor: Pooled,
) -> DispatchRow:
    lit, sat, big = (pool([r[path] for r in rounds]) for rounds in (light, closed, heavy))
    added = lit.latency_ms.minus(floor.latency_ms)
    return DispatchRow(
        path=path,
        light_added_p50=added.p50,
        light_added_p99=added.p99,
        light_cpu_ms=lit.cpu_ms(path),
        light_cpu_ms_rounds=[r[path].cpu_ms(path) for r in light],
        closed_rate=sat.achieved_rate,
        closed_p50=sat.latency_ms.p50,
        closed_cpu_ms=sat.cpu_ms(path),
        closed_cpu_ms_rounds=[r[path].cpu_ms(path) for r in closed],
        heavy_p50=big.latency_ms.p50,
        heavy_p99=big.latency_ms.p99,
        heavy_cpu_ms=big.cpu_ms(path),
        errors=sum(sum(p.errors.values()) for p in (lit, sat, big)),
    )


def _signed(value: float) -> str:
    """A difference in ms, signed, with no "-0.000" for a difference that rounds to nothing."""
    return f"{round(value, 3) + 0.0:+.3f}"


def _spread(values: Sequence[float]) -> str:
    finite = [v for v in values if not math.isnan(v)]
    if len(finite) < 2:
        return ms(finite[0] if finite else None, 3)
    return f"{ms(min(finite), 3)}-{ms(max(finite), 3)} (median {ms(statistics.median(finite), 3)})"


def render_dispatch(result: DispatchComparison, machine: Machine, command: str) -> str:
    """The section: the table, the rounds' spread, and what the threshold decides."""
    lines = [
        "## Dialect routes: Litestar route handlers against the direct dispatch (`make bench`, `--compare-dispatch`)",
        "",
        f"Run {machine.date} on {machine.cpu_model}, {machine.cores} cores (load average at the start "
        f"{machine.loadavg_start[0]:.2f}; the machine is shared). Command: `{command}`. Two gateway processes, "
        f"the same config as the run's (one uvicorn worker each, Redis rate limiting on, emulator at a fixed delay): "
        f"one serves the dialect routes as Litestar ASGI route handlers (one per path of the dialect table, "
        f"routing by Litestar, the body still read by the pipeline's bounded reader; the default), the other with "
        f"`{DISPATCH_ENV}=direct` (every dialect path handed to the pipeline before Litestar routes anything). "
        f"Interleaved rounds: {result.light_rounds} of {result.duration:g} s at {result.rate:g} req/s with the floor "
        f"(light: n=1, ~8 KB answer), {result.rounds} of {result.clients} closed-loop clients for "
        f"{result.duration:g} s, {result.rounds} of heavy answers at {result.heavy_rate:g} req/s for "
        f"{result.heavy_duration:g} s. CPU: the gateway process's "
        "utime+stime over the window, per answered request.",
        "",
        "| dispatch | light added p50 | light added p99 | CPU per light request | closed loop answered | its p50 "
        "| CPU per request there | heavy p50 | heavy p99 | CPU per heavy request | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {LABELS[row.path]} | {ms(row.light_added_p50)} ms | {ms(row.light_added_p99)} ms "
        f"| {ms(row.light_cpu_ms, 3)} ms | {row.closed_rate:.0f}/s | {ms(row.closed_p50)} ms "
        f"| {ms(row.closed_cpu_ms, 3)} ms | {ms(row.heavy_p50, 1)} ms | {ms(row.heavy_p99, 1)} ms "
        f"| {ms(row.heavy_cpu_ms, 1)} ms | {row.errors} |"
        for row in result.rows
    ]
    lines += ["", "CPU per request in each round (min-max):", ""]
    lines += [
        f"- {LABELS[row.path]}: light {_spread(row.light_cpu_ms_rounds)} ms; "
        f"closed loop {_spread(row.closed_cpu_ms_rounds)} ms"
        for row in result.rows
    ]
    extra = result.light_extra_ms
    closed_extra = result.row(LITESTAR).closed_cpu_ms - result.row(DIRECT).closed_cpu_ms
    paired = result.paired_light_extra_ms()
    cpu = result.in_process
    if cpu:
        each = cpu["us_per_request"]
        lines += [
            "",
            f"The dispatch alone, in one process (`python -m bench.dispatch_cpu`: both apps, this config, "
            f"{cpu['rounds']} alternating rounds of {cpu['requests_per_round']} requests through the ASGI interface, "
            f"a wrong method on a dialect route that the pipeline answers with no upstream call, "
            f"`time.process_time`): Litestar route handlers {each['litestar']['median']} µs per request (median; "
            f"min {each['litestar']['min']}), direct dispatch {each['direct']['median']} µs (min "
            f"{each['direct']['min']}); the median paired difference is "
            f"{cpu['litestar_minus_direct_us']['median']:+.1f} µs.",
        ]
    verdict = (
        "within the threshold: the dialect routes stay Litestar route handlers"
        if result.adopted
        else "over the threshold: the direct dispatch would be the one to keep"
    )
    read = "in process" if result.in_process else "on the servers"
    lines += [
        "",
        f"On the two servers, Litestar's routing shows as {_signed(extra)} ms of CPU per light request at "
        f"{result.rate:g} req/s, pooled (the median of the paired rounds: {_signed(paired)} ms; closed loop: "
        f"{_signed(closed_extra)} ms), against the direct dispatch. The rule is to adopt the route handlers unless "
        f"they cost more than {THRESHOLD_MS:g} ms of CPU per light request; read {read} "
        f"({_signed(result.deciding_ms)} ms), that is {verdict}.",
    ]
    return "\n".join(lines)


def render_dispatch_headline(result: DispatchComparison, machine: Machine, command: str, transport: str) -> str:
    """The comparison in one row of "Today's figures": the figure the rule reads, and what it decided."""
    litestar, direct = result.row(LITESTAR), result.row(DIRECT)
    columns, cells = [], []
    if result.in_process:
        each = result.in_process["us_per_request"]
        columns.append("the dispatch alone, in process: Litestar / direct (paired difference)")
        cells.append(
            f"{each['litestar']['median']} / {each['direct']['median']} µs "
            f"({result.in_process['litestar_minus_direct_us']['median']:+.1f} µs)"
        )
    columns += ["CPU per light request on the servers: Litestar / direct", f"rule (≤ {THRESHOLD_MS:g} ms added)"]
    cells += [
        f"{ms(litestar.light_cpu_ms, 3)} / {ms(direct.light_cpu_ms, 3)} ms",
        "Litestar route handlers kept" if result.adopted else "over: the direct dispatch would be kept",
    ]
    first = [machine.date, machine_cell(machine), f"`{command}`", transport]
    return headline_table(columns, [first + cells])
