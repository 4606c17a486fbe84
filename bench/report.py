"""The benchmarks' sections of docs/benchmarks.md, from their typed results.

Each benchmark owns a section between markers (`<!-- proxy:start -->` ... `<!-- proxy:end -->`)
and rewrites only that one, so a run of one leaves the others' figures alone. Its headline, the
table of "Today's figures" at the top of the file, sits between markers of its own
(`<!-- proxy-headline:start -->` ...) and is rewritten in the same write, where the file has them.
The proxy section is built from one small function per table; the wording and the tables are those
of every earlier run, so that two runs compare line by line.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

from bench.results import (
    CpuMemoryRow,
    Heavy,
    Latency,
    LoadgenHealth,
    Machine,
    Meta,
    Phase,
    Pooled,
    PortkeyResults,
    Profile,
    ProxyResults,
    ServerRow,
    Steps,
    Target,
)
from bench.stack import MODEL, ROOT

__all__ = [
    "DOCS",
    "PORTKEY",
    "PROXY",
    "SERVERS",
    "Markers",
    "headline_table",
    "mib",
    "ms",
    "ratio",
    "render",
    "render_headline",
    "render_portkey",
    "render_portkey_headline",
    "render_servers",
    "render_servers_headline",
    "write_docs",
]

DOCS = ROOT / "docs" / "benchmarks.md"


class Markers(NamedTuple):
    """The HTML comments around one benchmark's section."""

    start: str
    end: str

    @classmethod
    def named(cls, name: str) -> Markers:
        return cls(f"<!-- {name}:start -->", f"<!-- {name}:end -->")

    @property
    def headline(self) -> Markers:
        """The markers of the same benchmark's table in "Today's figures" (`<!-- proxy-headline:start -->`)."""
        return Markers(self.start.replace(":start", "-headline:start"), self.end.replace(":end", "-headline:end"))


PROXY, SERVERS, PORTKEY = Markers.named("proxy"), Markers.named("servers"), Markers.named("portkey")


def write_docs(path: Path, block: str, markers: Markers = PROXY, headline: str | None = None) -> None:
    """Replace the section between the markers (or add it at the end), leaving the rest of the file alone.

    ``headline`` replaces what is between the headline markers, where the file has them (the top of
    docs/benchmarks.md does); a file without them gets no headline, so nothing moves."""
    original = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"{markers.start}\n{block.rstrip()}\n{markers.end}"
    text = _replaced(original, markers, section)
    if text is None:
        text = original.rstrip() + "\n\n" + section + "\n"
    if headline is not None:
        top = markers.headline
        text = _replaced(text, top, f"{top.start}\n{headline.rstrip()}\n{top.end}") or text
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _replaced(text: str, markers: Markers, section: str) -> str | None:
    """``text`` with what the markers hold (them included) replaced by ``section``; None without both markers."""
    start, end = markers.start, markers.end
    if start in text and end in text and text.index(start) < text.index(end):
        head, rest = text.split(start, 1)
        return head + section + rest.split(end, 1)[1]
    return None


def headline_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table of "Today's figures": date, machine, command and the upstream transport first, then the figures."""
    head = ["date", "machine", "command", "default transport", *columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 4 + "---:|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def machine_cell(machine: Machine) -> str:
    return f"{machine.cpu_model}, {machine.cores} cores (load {machine.loadavg_start[0]:.2f} at the start)"


# --------------------------------------------------------------------------- figures


def _missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def ms(value: float | None, digits: int = 2) -> str:
    return "-" if _missing(value) else f"{value:.{digits}f}"


def mib(value: float | None) -> str:
    return "-" if value is None or _missing(value) else f"{value / 1024 / 1024:.1f} MiB"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or _missing(a) or _missing(b) or b <= 0:
        return "-"
    return f"{a / b:.1f}x"


def _errors(errors: dict[str, int]) -> str:
    total = sum(errors.values())
    return "0" if not total else f"{total} ({', '.join(f'{k}: {v}' for k, v in sorted(errors.items()))})"


def _own(path: str) -> str:
    """Whose CPU a path's row reports: the proxy's own, or the emulator's for the floor."""
    return "emulator" if path == "floor" else path


# --------------------------------------------------------------------------- the proxy section


def render(results: ProxyResults) -> str:
    """The Markdown block for docs/benchmarks.md (and stdout)."""
    sections: list[Callable[[ProxyResults], Iterator[str]]] = [
        _intro,
        _fixed_table,
        _fixed_ratios,
        _steps_table,
        _steps_summary,
        _cpu_memory_table,
        _heavy_tables,
        _profiles,
        _targets,
        _obstacles,
    ]
    lines = [line for section in sections for line in section(results)]
    return "\n".join(lines).rstrip() + "\n"


def _intro(results: ProxyResults) -> Iterator[str]:
    meta, machine = results.meta, results.machine
    yield "## Proxy overhead: image-gateway against LiteLLM (`make bench`)"
    yield ""
    yield _where(machine, meta)
    yield _servers_line(machine, meta)
    yield (
        f"Command: `{meta.command}`: {meta.duration:g} s per phase, {meta.rounds} interleaved rounds per "
        f"fixed rate; emulator latency fixed at {meta.emulator_delay_ms:g} ms; "
        f"total {meta.elapsed_s / 60:.1f} min."
    )
    yield ""
    yield HOW
    yield ""


def _where(machine: Machine, meta: Meta) -> str:
    return (
        f"Run {machine.date} on {machine.cpu_model}, {machine.cores} cores "
        f"({machine.cores_usable} usable), "
        f"{machine.mem_gib} GiB, Linux {machine.kernel}. Load average at the start "
        f"{machine.loadavg_start[0]:.2f}; the machine is shared, and during the measured phases the whole machine "
        f"was busy {meta.busy_cores_mean:.2f} of {machine.cores} cores on average, of which "
        f"{meta.others_cores_mean:.2f} by processes other than the servers measured and the load generator "
        "(Redis among them)."
    )


def _servers_line(machine: Machine, meta: Meta) -> str:
    stack, lt = machine.gateway_stack, meta.litellm_stack
    litellm = (
        f"LiteLLM {meta.litellm_version} proxy (`litellm --num_workers 1`: uvicorn {lt.get('uvicorn', '?')}, "
        f"{lt.get('loop', '?')} loop, {lt.get('http', '?')} parser), master key set, no database, no callbacks."
        if meta.litellm_version
        else f"LiteLLM: {meta.litellm_missing}."
    )
    return (
        f"Python {machine.python}. image-gateway: one uvicorn {stack.uvicorn} worker ({stack.loop} loop, "
        f"{stack.http} HTTP parser), Litestar {stack.litestar}, httpx {stack.httpx}, "
        f"redis-py {stack.redis}, "
        f"Redis rate limiting on (an inbound key with a limit), logs at `info` to a file. " + litellm
    )


HOW = (
    "How: the load generator (`bench/loadgen.py`, raw asyncio, its own process) sends open-loop: request *i* "
    "leaves at start + i/rate whatever the earlier ones did, over persistent HTTP/1.1 connections (a new one "
    "whenever none is idle), so queueing shows as latency. Every request is the same "
    f"`POST /v1/images/generations` (`{MODEL}`, 1024x1024, n=1, `response_format: b64_json`, a ~8 KB answer "
    "whose base64 passes through). *Floor*: the client straight to the Melious emulator; *gateway* and "
    "*LiteLLM*: the same through each proxy to the same emulator. Added latency = percentile(through the "
    "proxy) - percentile(floor). Percentiles do not subtract exactly (the p99 of a sum is not the sum of "
    "p99s, and requests cannot be paired across runs), so read the added p99 as how far the client's p99 "
    "moves. CPU: utime+stime from /proc over the measured window, per answered request. Memory: VmHWM "
    "(reset at the window's start through /proc/PID/clear_refs) and VmRSS sampled every 20 ms."
)


# ----- (a) fixed rates


def _fixed_table(results: ProxyResults) -> Iterator[str]:
    yield "### Added latency at a fixed rate"
    yield ""
    yield "| rate | path | p50 | p95 | p99 | max | added p50 | added p95 | added p99 | errors | CPU per request |"
    yield "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"
    for key, block in results.fixed.items():
        floor = block.pooled["floor"].latency_ms
        for path, pooled in block.pooled.items():
            yield _fixed_row(key, path, pooled, floor)
    yield ""


def _fixed_row(key: str, path: str, pooled: Pooled, floor: Latency) -> str:
    lat = pooled.latency_ms
    more = lat.minus(floor)
    added = [math.nan] * 3 if path == "floor" else [more.p50, more.p95, more.p99]
    unit = " ms (emulator)" if path == "floor" else " ms"
    return (
        f"| {key}/s | {path} | {ms(lat.p50)} | {ms(lat.p95)} | {ms(lat.p99)} | {ms(lat.max)} | "
        f"{ms(added[0])} | {ms(added[1])} | {ms(added[2])} | {_errors(pooled.errors)} | "
        f"{ms(pooled.cpu_ms(_own(path)))}{unit} |"
    )


def _fixed_ratios(results: ProxyResults) -> Iterator[str]:
    yield "Latencies in ms. Ratios (pooled rounds):"
    yield ""
    for key, block in results.fixed.items():
        yield _ratio_line(key, block.pooled, block.rounds) + "."
    yield ""


def _ratio_line(key: str, pooled: dict[str, Pooled], rounds: Sequence[dict[str, Phase]]) -> str:
    floor, gw = pooled["floor"].latency_ms, pooled["gateway"].latency_ms
    text = (
        f"- {key}/s: through the gateway p50 is {ratio(gw.p50, floor.p50)} the floor's, p99 {ratio(gw.p99, floor.p99)}"
    )
    if "litellm" in pooled:
        li = pooled["litellm"].latency_ms
        add_gw, add_li = gw.minus(floor), li.minus(floor)
        text += (
            f"; through LiteLLM {ratio(li.p50, floor.p50)} and {ratio(li.p99, floor.p99)}. "
            f"LiteLLM adds {ratio(add_li.p50, add_gw.p50)} the gateway's added p50 and "
            f"{ratio(add_li.p99, add_gw.p99)} its added p99"
            f"; {ratio(pooled['litellm'].cpu_ms('litellm'), pooled['gateway'].cpu_ms('gateway'))} "
            "its CPU per request"
        )
    if len(rounds) > 1:
        per = [r["gateway"].latency_ms.minus(r["floor"].latency_ms) for r in rounds]
        text += (
            f". Gateway added p50 per round: {', '.join(ms(x.p50) for x in per)} ms; added p99 per round: "
            f"{', '.join(ms(x.p99) for x in per)} ms"
        )
    return text


# ----- (b) rate steps


def _steps_table(results: ProxyResults) -> Iterator[str]:
    yield f"### Highest rate one worker carries (added p99 ≤ {results.meta.bound_ms:g} ms, no errors)"
    yield ""
    yield (
        "| path | rate | floor p99 | p50 | p99 | added p99 | answered/s | errors | proxy CPU (cores) "
        "| CPU per request | verdict |"
    )
    yield "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|"
    for path, ladder in results.steps.ladders().items():
        for row in ladder.rows:
            res, proc = row.result, row.result.proc[path]
            verdict = "carried" if row.passed else f"not carried: {row.why}"
            if not row.floor_ok:
                verdict += " (the floor itself missed the bound: the emulator or the machine is the limit here)"
            yield (
                f"| {path} | {row.rate:g}/s | {ms(row.floor.latency_ms.p99)} | {ms(res.latency_ms.p50)} | "
                f"{ms(res.latency_ms.p99)} | {ms(row.added.p99)} | {res.achieved_rate:.0f} | "
                f"{_errors(res.errors)} | {proc.cpu_util:.2f} | {ms(proc.cpu_ms_per_request)} ms | {verdict} |"
            )
    yield ""


def _steps_summary(results: ProxyResults) -> Iterator[str]:
    steps, meta = results.steps, results.meta
    yield "Within the bound: " + "; ".join(_carried(steps)) + "."
    if steps.saturation:
        cells = [
            f"{path} {phase.achieved_rate:.0f}/s (p50 {ms(phase.latency_ms.p50)} ms)"
            for path, phase in steps.saturation.items()
        ]
        yield (
            f"Most answered at any latency ({meta.saturation_connections} closed-loop clients, "
            f"{meta.duration:g} s): " + ", ".join(cells) + "."
        )
    yield ""


def _carried(steps: Steps) -> Iterator[str]:
    for path, ladder in steps.ladders().items():
        if ladder.carried:
            yield f"{path} carried {ladder.carried:g} req/s"
        else:
            yield f"{path} not even at its lowest step ({ladder.rows[0].rate:g} req/s)"
    if steps.litellm is not None and steps.litellm.carried and steps.gateway.carried:
        yield f"{ratio(steps.gateway.carried, steps.litellm.carried)} LiteLLM's"


# ----- (c, d) CPU and memory


def _cpu_memory_table(results: ProxyResults) -> Iterator[str]:
    yield "### CPU per request and memory"
    yield ""
    yield "| | gateway | LiteLLM | LiteLLM / gateway |"
    yield "|---|---:|---:|---:|"
    for row in results.cpu_memory:
        cells = [_value(row, row.gateway), _value(row, row.litellm), ratio(row.litellm, row.gateway)]
        yield f"| {row.label} | " + " | ".join(cells) + " |"
    yield ""
    if results.loadgen is not None:
        yield _loadgen_line(results.loadgen)
        yield ""


def _value(row: CpuMemoryRow, value: float) -> str:
    return mib(value) if row.kind == "bytes" else f"{ms(value)} {row.kind}"


def _loadgen_line(gen: LoadgenHealth) -> str:
    return (
        f"The load generator is not the limit: at its busiest (the {gen.rate:g} req/s phases) it used "
        f"{gen.cpu_ms_per_request:.3f} ms of CPU per request and issued its requests at most "
        f"{gen.lag_p99_ms:.2f} ms late (p99); the floor answered {gen.floor_max:.0f} req/s closed-loop, so "
        "neither it nor the emulator bounds the proxies' figures."
    )


# ----- (e) heavy answers


def _heavy_tables(results: ProxyResults) -> Iterator[str]:
    heavy = results.heavy
    if not heavy:
        return
    answer = next((r.answer_bytes for rows in heavy.memory.values() for r in rows), math.nan)
    yield f"### Heavy answers: n=4 at 1024x1024, incompressible PNGs ({mib(answer)} of JSON per answer)"
    yield ""
    yield from _heavy_latency(heavy, results.meta.heavy_rate)
    yield ""
    yield from _heavy_memory(heavy)
    yield ""
    yield (
        "Growth is the peak RSS of the phase (VmHWM, and 20 ms samples) minus the RSS before the first heavy "
        "request, divided by the requests in flight (closed loop: that many clients)."
    )
    yield ""


def _heavy_latency(heavy: Heavy, rate: float) -> Iterator[str]:
    yield "| path | rate | p50 | p95 | p99 | added p50 | added p99 | errors | CPU per request |"
    yield "|---|---:|---:|---:|---:|---:|---:|---|---:|"
    floor = heavy.latency["floor"].latency_ms
    for path, res in heavy.latency.items():
        lat = res.latency_ms
        more = lat.minus(floor)
        added = (math.nan, math.nan) if path == "floor" else (more.p50, more.p99)
        yield (
            f"| {path} | {rate:g}/s | {ms(lat.p50, 1)} | {ms(lat.p95, 1)} | "
            f"{ms(lat.p99, 1)} | "
            f"{ms(added[0], 1)} | {ms(added[1], 1)} | {_errors(res.errors)} | {ms(res.cpu_ms(_own(path)), 1)} ms |"
        )


def _heavy_memory(heavy: Heavy) -> Iterator[str]:
    yield "| path | in flight | RSS before heavy | peak RSS | growth | per in-flight request | ÷ answer size |"
    yield "|---|---:|---:|---:|---:|---:|---:|"
    for path, rows in heavy.memory.items():
        for row in rows:
            yield (
                f"| {path} | {row.in_flight} | {mib(row.baseline_rss)} | {mib(row.peak_rss)} | "
                f"{mib(row.growth)} | {mib(row.per_in_flight)} | {row.ratio:.2f}x |"
            )


# ----- py-spy


def _profiles(results: ProxyResults) -> Iterator[str]:
    for profile in results.profiles:
        if profile.error or profile.result is None:
            yield f"py-spy at {profile.rate:g} req/s: {profile.error}"
            yield ""
        else:
            yield from _profile(profile, profile.result)


def _profile(prof: Profile, res: Phase) -> Iterator[str]:
    yield (
        f"### Where the gateway's CPU goes: py-spy at {prof.rate:g} req/s offered "
        f"({res.achieved_rate:.0f}/s answered, p50 {ms(res.latency_ms.p50)} ms, "
        f"{res.proc['gateway'].cpu_util:.2f} cores)"
    )
    yield ""
    yield (
        f"{prof.busy_samples} busy samples at 250 Hz. py-spy pauses the process for each sample, so these "
        "phases run slower and feed no other figure here."
    )
    yield ""
    yield "| share of busy samples | where (the innermost of these on the stack) |"
    yield "|---:|---|"
    for name, share in prof.categories:
        yield f"| {share:.1f}% | {name} |"
    yield ""
    yield "Top frames by own time: " + "; ".join(f"`{f}` {s:.1f}%" for f, s in prof.top_self[:10]) + "."
    yield ""
    yield (
        "The gateway's own functions, including what they call: "
        + "; ".join(f"`{f}` {s:.0f}%" for f, s in prof.gateway_inclusive[:12])
        + "."
    )
    yield ""


# ----- targets and obstacles


def _targets(results: ProxyResults) -> Iterator[str]:
    yield "### Targets"
    yield ""
    yield "| target | measured | verdict |"
    yield "|---|---|---|"
    for row in results.targets:
        yield _target_row(row)
    yield ""


def _target_row(row: Target) -> str:
    return f"| {row.target} | {row.measured} | {row.verdict} |"


def _obstacles(results: ProxyResults) -> Iterator[str]:
    if not results.obstacles:
        return
    yield "### What stands in the way"
    yield ""
    for item in results.obstacles:
        yield f"- {item}"
    yield ""


# ----- the headline: "Today's figures" at the top of the file


def render_headline(results: ProxyResults) -> str:
    """The light requests' table and, when the run had them, the heavy answers' table."""
    meta, machine = results.meta, results.machine
    first = [machine.date, machine_cell(machine), f"`{meta.command}`", meta.upstream_transport or "not recorded"]
    key, block = next(iter(results.fixed.items()))
    floor, gw = block.pooled["floor"].latency_ms, block.pooled["gateway"].latency_ms
    added = gw.minus(floor)
    sat = results.steps.saturation.get("gateway")
    carried = results.steps.gateway.carried
    cells = [
        f"{ms(added.p50)} / {ms(added.p99)} ms",
        f"{ms(block.pooled['gateway'].cpu_ms('gateway'))} ms",
        f"{carried:g} req/s" if carried else "none",
        f"{sat.achieved_rate:.0f}/s" if sat else "-",
    ]
    columns = [
        f"added p50 / p99 at {key} req/s",
        f"CPU per request at {key} req/s",
        f"highest rate carried (added p99 ≤ {meta.bound_ms:g} ms)",
        "most answered (closed loop)",
    ]
    if "litellm" in block.pooled:
        columns.append("LiteLLM's added p50 at " + " / ".join(f"{k}" for k in results.fixed) + " req/s")
        cells.append(" / ".join(_litellm_added(fixed.pooled) for fixed in results.fixed.values()) + " ms")
    text = headline_table(columns, [first + cells])
    if results.heavy:
        text += "\n" + _heavy_headline(results.heavy, meta.heavy_rate, first)
    return text


def _litellm_added(pooled: dict[str, Pooled]) -> str:
    return ms(pooled["litellm"].latency_ms.minus(pooled["floor"].latency_ms).p50)


def _heavy_headline(heavy: Heavy, rate: float, first: list[str]) -> str:
    floor = heavy.latency["floor"].latency_ms
    gateway = heavy.latency["gateway"]
    added = gateway.latency_ms.minus(floor)
    answer = next((r.answer_bytes for rows in heavy.memory.values() for r in rows), math.nan)
    rows = sorted(heavy.memory.get("gateway", []), key=lambda row: row.in_flight)
    memory = " / ".join(f"{row.ratio:.2f}x" for row in rows)
    in_flight = " / ".join(str(row.in_flight) for row in rows)
    columns = ["answer", "added p50 / p99", "CPU per request", f"memory per request ÷ answer, {in_flight} in flight"]
    cells = [
        f"{mib(answer)} at {rate:g} req/s",
        f"{ms(added.p50, 1)} / {ms(added.p99, 1)} ms",
        f"{ms(gateway.cpu_ms('gateway'), 1)} ms",
        memory or "-",
    ]
    if "litellm" in heavy.latency:
        columns.append("LiteLLM's added p50")
        cells.append(f"{ms(heavy.latency['litellm'].latency_ms.minus(floor).p50, 1)} ms")
    return "Heavy answers, the same run:\n\n" + headline_table(columns, [first + cells])


# --------------------------------------------------------------------------- side benchmarks


class ServersRun(Protocol):
    """What the servers section says of how it was run (bench.servers' options)."""

    emulator_delay_ms: float
    rounds: int
    duration: float
    rate: float
    saturation_connections: int


def render_servers(rows: Sequence[ServerRow], run: ServersRun, machine: Machine, when: str) -> str:
    """`make bench-servers`: one row per way of serving the gateway."""
    lines = [
        "## ASGI server, event loop and processes (`make bench-servers`)",
        "",
        f"Run {when} on {machine.cpu_model}, {machine.cores} cores; `python -m bench.servers`: the gateway of "
        f"`make bench` (Redis rate limiting on, emulator at {run.emulator_delay_ms:g} ms) served each way in turn; "
        f"{run.rounds} rounds of {run.duration:g} s at {run.rate:g} req/s interleaved with the floor, then "
        f"{run.saturation_connections} closed-loop clients for {run.duration:g} s. CPU is the whole process tree's "
        "(both workers, and the parent, for two processes).",
        "",
        f"| served by | added p50 at {run.rate:g}/s | added p99 | CPU per request | most answered "
        "(closed loop) | its p50 | CPU per request there | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {row.label} | {ms(row.added_p50)} ms | {ms(row.added_p99)} ms | {ms(row.cpu_ms)} ms | "
        f"{row.saturation:.0f}/s | {ms(row.saturation_p50)} ms | {ms(row.saturation_cpu_ms)} ms | "
        f"{row.errors} |"
        for row in rows
    ]
    best = min(rows, key=lambda r: r.cpu_ms if not math.isnan(r.cpu_ms) else math.inf)
    lines += ["", f"Least CPU per request at {run.rate:g} req/s: {best.label}."]
    return "\n".join(lines)


class PortkeyRun(Protocol):
    """What the Portkey section says of how it was run (bench.portkey's options)."""

    emulator_delay_ms: float
    rounds: int
    duration: float
    saturation_connections: int


def render_portkey(results: PortkeyResults, run: PortkeyRun, machine: Machine, when: str) -> str:
    """`make bench-portkey`: floor, gateway and Portkey at each rate, then each one's closed loop."""
    lines = [
        "## Against Portkey's gateway (`make bench-portkey`)",
        "",
        f"Run {when} on {machine.cpu_model}, {machine.cores} cores; `python -m bench.portkey`: "
        f"`@portkey-ai/gateway` {results.portkey_version} on Node.js {results.node_version} (one process, "
        "headless, the emulator as its custom OpenAI host) against image-gateway as in `make bench` (one uvicorn "
        f"worker, Redis rate limiting on, an inbound key); emulator at {run.emulator_delay_ms:g} ms; "
        f"{run.rounds} interleaved rounds of {run.duration:g} s per rate. Portkey checks no key and limits "
        "nothing here: it does less per request than the gateway does.",
        "",
        "| rate | path | p50 | p99 | added p50 | added p99 | CPU per request | errors |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for rate, pooled in results.fixed.items():
        lines += [_portkey_row(rate, path, pooled[path], pooled["floor"].latency_ms) for path in pooled]
    lines += ["", "Latencies in ms."]
    lines += [_portkey_ratio(rate, pooled) for rate, pooled in results.fixed.items()]
    sat = results.saturation
    lines.append(
        f"- Most answered at any latency ({run.saturation_connections} closed-loop clients): gateway "
        f"{sat['gateway'].achieved_rate:.0f}/s (p50 {ms(sat['gateway'].latency_ms.p50)} ms), Portkey "
        f"{sat['portkey'].achieved_rate:.0f}/s (p50 {ms(sat['portkey'].latency_ms.p50)} ms)."
    )
    return "\n".join(lines)


def _portkey_row(rate: str, path: str, pooled: Pooled, floor: Latency) -> str:
    lat = pooled.latency_ms
    more = lat.minus(floor)
    added = ("-", "-") if path == "floor" else (ms(more.p50), ms(more.p99))
    return (
        f"| {rate}/s | {path} | {ms(lat.p50)} | {ms(lat.p99)} | {added[0]} | {added[1]} | "
        f"{ms(pooled.cpu_ms(_own(path)))} ms | {sum(pooled.errors.values())} |"
    )


def _portkey_ratio(rate: str, pooled: dict[str, Pooled]) -> str:
    floor = pooled["floor"].latency_ms
    ours = pooled["gateway"].latency_ms.minus(floor).p50
    theirs = pooled["portkey"].latency_ms.minus(floor).p50
    if ours <= 0:
        return f"- {rate}/s: the gateway adds nothing measurable."
    return (
        f"- {rate}/s: Portkey adds {ms(theirs)} ms at p50, the gateway {ms(ours)} ms: "
        f"{theirs / ours:.1f}x the gateway's."
    )


def render_servers_headline(rows: Sequence[ServerRow], machine: Machine, when: str, transport: str) -> str:
    """`make bench-servers` in one row: which way of serving costs least, and which answers most."""
    measured = [row for row in rows if not math.isnan(row.cpu_ms)] or list(rows)
    best = min(measured, key=lambda r: r.cpu_ms)
    most = max(rows, key=lambda r: r.saturation)
    others = [row.cpu_ms for row in measured if row is not best]
    rest = f" (the others {min(others):.2f}-{max(others):.2f} ms)" if others else ""
    cells = [
        f"{best.label}: {ms(best.cpu_ms)} ms{rest}",
        f"{ms(best.added_p50)} ms",
        f"{most.label}: {most.saturation:.0f}/s",
        str(sum(row.errors for row in rows)),
    ]
    columns = ["least CPU per request", "its added p50", "most answered (closed loop)", "errors"]
    return headline_table(columns, [[when, f"{machine.cpu_model}, {machine.cores} cores", "`python -m bench.servers`",
                                     transport, *cells]])  # fmt: skip


def render_portkey_headline(results: PortkeyResults, machine: Machine, when: str, transport: str) -> str:
    """`make bench-portkey` in one row: each proxy's added p50 at each rate, CPU per request, closed loop."""
    columns, cells = [], []
    for rate, pooled in results.fixed.items():
        floor = pooled["floor"].latency_ms
        added = [ms(pooled[path].latency_ms.minus(floor).p50) for path in ("gateway", "portkey")]
        columns.append(f"added p50 at {rate}/s: gateway / Portkey")
        cells.append(" / ".join(added) + " ms")
    rate, pooled = next(iter(results.fixed.items()))
    columns.append(f"CPU per request at {rate}/s: gateway / Portkey")
    cells.append(f"{ms(pooled['gateway'].cpu_ms('gateway'))} / {ms(pooled['portkey'].cpu_ms('portkey'))} ms")
    sat = results.saturation
    columns.append("most answered (closed loop): gateway / Portkey")
    cells.append(f"{sat['gateway'].achieved_rate:.0f} / {sat['portkey'].achieved_rate:.0f}/s")
    first = [when, f"{machine.cpu_model}, {machine.cores} cores", "`python -m bench.portkey`", transport]
    return headline_table(columns, [first + cells])
