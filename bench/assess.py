"""What a `make bench` run makes of its figures: the targets met or missed, and what stands
in the way of the ones missed, each obstacle written only when the figures show it."""

from __future__ import annotations

import math
from collections.abc import Iterator

from bench.report import mib
from bench.results import Added, Assessment, FixedRate, HeavyMemory, Pooled, Profile, ProxyResults, Target

__all__ = ["assess", "verdict"]

ADDED_P50_MS = 0.7
ADDED_P99_MS = 3.0
CARRIED_RATE = 1000
LITELLM_FACTOR = 10
HEAVY_RATIO = 3.0


def verdict(value: float, limit: float, unit: str = " ms", lower_is_better: bool = True) -> str:
    """ "met", or by how much it was missed."""
    if value is None or math.isnan(value):
        return "not measured"
    if lower_is_better:
        if value < limit:
            return "met"
        return f"missed by {value - limit:.2f}{unit} ({100 * (value / limit - 1):.0f}% over)"
    if value >= limit:
        return "met"
    return f"missed: {value:g} of {limit:g} ({100 * value / limit:.0f}%)"


def assess(results: ProxyResults) -> Assessment:
    """The targets table and the data-driven obstacles."""
    return Assessment(targets=list(targets(results)), obstacles=list(obstacles(results)))


def reference_rate(results: ProxyResults) -> str:
    """The fixed rate the targets speak of: 200 req/s, or the first one measured."""
    fixed = results.fixed
    return next((k for k in fixed if float(k) == 200.0), None) or next(iter(fixed))


def _added(pooled: dict[str, Pooled], path: str) -> Added:
    return pooled[path].latency_ms.minus(pooled["floor"].latency_ms)


# --------------------------------------------------------------------------- targets


def targets(results: ProxyResults) -> Iterator[Target]:
    key = reference_rate(results)
    pooled = results.fixed[key].pooled
    gateway = _added(pooled, "gateway")
    added50, added99 = gateway.p50, gateway.p99
    yield Target(
        target=f"added p50 at {key} req/s, one worker < {ADDED_P50_MS:g} ms",
        measured=f"{added50:.2f} ms",
        verdict=verdict(added50, ADDED_P50_MS),
    )
    yield Target(
        target=f"added p99 at {key} req/s, one worker < {ADDED_P99_MS:g} ms",
        measured=f"{added99:.2f} ms",
        verdict=verdict(added99, ADDED_P99_MS),
    )
    yield _carried_target(results)
    for rate, block in results.fixed.items():
        if "litellm" in block.pooled:
            yield _litellm_target(rate, block)
    worst = _worst_heavy(results)
    if worst is not None:
        yield Target(
            target=f"heavy answers: peak memory per in-flight request < {HEAVY_RATIO:g}x the answer",
            measured=(
                f"{worst.ratio:.2f}x ({mib(worst.per_in_flight)} per request, {worst.in_flight} in "
                f"flight, answer {mib(worst.answer_bytes)})"
            ),
            verdict=verdict(worst.ratio, HEAVY_RATIO, unit="x"),
        )


def _carried_target(results: ProxyResults) -> Target:
    carried = results.steps.gateway.carried
    saturation = results.steps.saturation.get("gateway")
    measured = f"carried {carried:g} req/s"
    if saturation is not None:
        measured += f"; answers at most {saturation.achieved_rate:.0f} req/s at any latency"
    share = f"missed: {carried:g} of 1,000 req/s ({100 * carried / CARRIED_RATE:.0f}%)"
    return Target(
        target=f"one worker carries 1,000 req/s with p99 added < {results.meta.bound_ms:g} ms",
        measured=measured,
        verdict="met" if carried >= CARRIED_RATE else share,
    )


def _litellm_target(rate: str, block: FixedRate) -> Target:
    ours, theirs = _added(block.pooled, "gateway").p50, _added(block.pooled, "litellm").p50
    factor = theirs / ours if ours > 0 else math.inf
    measured = f"gateway {ours:.2f} ms, LiteLLM {theirs:.2f} ms: {factor:.1f}x"
    answered = block.pooled["litellm"].achieved_rate
    if answered < 0.95 * block.rate:
        measured += f" (LiteLLM answers only {answered:.0f} req/s here: its added latency is its queue)"
    needed = f"needs the gateway's added p50 ≤ {theirs / LITELLM_FACTOR:.2f} ms"
    return Target(
        target=f"≥ {LITELLM_FACTOR}x lower added latency than LiteLLM at {rate} req/s (p50)",
        measured=measured,
        verdict="met" if factor >= LITELLM_FACTOR else f"missed: {factor:.1f}x of {LITELLM_FACTOR}x ({needed})",
    )


def _worst_heavy(results: ProxyResults) -> HeavyMemory | None:
    rows = results.heavy.memory.get("gateway") if results.heavy else None
    return max(rows, key=lambda r: r.ratio) if rows else None


# --------------------------------------------------------------------------- obstacles


def obstacles(results: ProxyResults) -> Iterator[str]:
    yield from _cpu_obstacles(results)
    yield from _low_rate_obstacle(results)
    for profile in results.profiles:
        yield from _profile_obstacles(profile, lowest=min(p.rate for p in results.profiles))
    yield from _machine_obstacles(results)
    yield from _heavy_obstacle(results)


def _cpu_obstacles(results: ProxyResults) -> Iterator[str]:
    key = reference_rate(results)
    pooled = results.fixed[key].pooled
    cpu = pooled["gateway"].cpu_ms("gateway")
    emulator = pooled["floor"].cpu_ms("emulator")
    yield (
        f"CPU: the gateway spends {cpu:.2f} ms of CPU per request at {key} req/s, so one worker (one core) "
        f"cannot answer more than about {1000 / cpu:.0f} req/s; 1,000 req/s needs under 1 ms per request, "
        f"before the emulator ({emulator:.2f} ms per request), Redis and the load generator that share the "
        f"machine's {results.machine.cores} cores with it."
    )
    added50 = _added(pooled, "gateway").p50
    if added50 > ADDED_P50_MS:
        yield (
            f"Added latency is mostly that same CPU: at {key} req/s a request spends about {cpu:.2f} ms of gateway "
            f"CPU on its path (two HTTP exchanges, a Redis round trip, {results.meta.log_lines_per_request:.1f} JSON "
            "log lines) against "
            f"{added50:.2f} ms added at p50; the p50 target ({ADDED_P50_MS:g} ms) needs it cut by about "
            f"{100 * (1 - ADDED_P50_MS / added50):.0f}%."
        )


def _low_rate_obstacle(results: ProxyResults) -> Iterator[str]:
    rates = sorted(results.fixed, key=float)
    if len(rates) < 2:
        return
    low, high = rates[0], rates[-1]
    cpu_low = results.fixed[low].pooled["gateway"].cpu_ms("gateway")
    cpu_high = results.fixed[high].pooled["gateway"].cpu_ms("gateway")
    if cpu_low <= 1.3 * cpu_high:
        return
    idle = next((r.gateway for r in results.cpu_memory if r.label.startswith("CPU while")), 0)
    low_added = _added(results.fixed[low].pooled, "gateway").p50
    yield (
        f"At low rates each request costs more: {cpu_low:.2f} ms of CPU per request at {low} req/s against "
        f"{cpu_high:.2f} ms at {high} req/s, while the idle gateway uses {idle:.1f} ms of CPU per second. That "
        "is no background work: most likely the price of waking an idle process for every request (cold "
        "caches, the virtual machine's idle exits), and it is why the added latency at "
        f"{low} req/s ({low_added:.2f} ms "
        f"at p50) is higher than at {high} req/s."
    )


def _profile_obstacles(profile: Profile, lowest: float) -> Iterator[str]:
    if not profile.categories:
        return
    rate, marks = f"{profile.rate:g}", profile.marks
    top = ", ".join(f"{name} {share:.0f}%" for name, share in profile.categories[:5])
    yield f"Profile at {rate} req/s offered (share of busy samples): {top}."
    if marks.get("httpcore_expiry_scan", 0) >= 3:
        yield (
            f"At {rate} req/s, {marks['httpcore_expiry_scan']:.0f}% of the gateway's CPU is httpcore "
            "checking, every time it hands out a connection, whether each pooled upstream connection has "
            "expired (`has_expired`: anyio's `get_extra_info`, and a poll of the socket in "
            "`is_socket_readable`): the cost grows with the number of upstream connections, so an overloaded "
            "gateway slows down further (a known httpcore cost: encode/httpcore#928)."
        )
    if profile.rate == lowest and marks.get("socket_write", 0) >= 10:
        yield (
            f"At {rate} req/s, {marks['socket_write']:.0f}% of the samples are inside socket "
            "writes: on loopback the kernel delivers the data to the receiving socket within the sender's "
            "system call, so this is the kernel's share of the client exchange, the upstream exchange and "
            "the Redis round trip. A faster event loop does not remove it; fewer writes per request would "
            "(h11 and httpcore each write the headers and the body separately)."
        )
    if marks.get("async_bookkeeping", 0) >= 5:
        yield (
            f"At {rate} req/s, {marks['async_bookkeeping']:.0f}% of the samples are in anyio, "
            "sniffio and `asyncio.current_task` themselves: httpcore's anyio backend takes a lock, sets up "
            "an event or a cancel scope several times per request, and each asks which task and "
            "which async library is running."
        )


def _machine_obstacles(results: ProxyResults) -> Iterator[str]:
    stack = results.machine.gateway_stack
    if stack.loop != "uvloop" or stack.http != "httptools":
        yield (
            f"The gateway runs on uvicorn's pure-Python defaults here ({stack.loop} loop, {stack.http} parser): "
            "the project depends on plain `uvicorn`, not `uvicorn[standard]`, so neither uvloop nor httptools is "
            "installed."
        )
    others = results.meta.others_cores_mean
    if others > 0.3:
        yield (
            f"The machine is shared: other processes kept {others:.2f} cores busy on average "
            "during the measured phases, which inflates every latency here (floor included) and lowers the "
            "highest carried rate."
        )


def _heavy_obstacle(results: ProxyResults) -> Iterator[str]:
    worst = _worst_heavy(results)
    if worst is None or worst.ratio < HEAVY_RATIO:
        return
    text = (
        f"Heavy answers: {worst.ratio:.1f}x the answer at {worst.in_flight} in flight. The adapter reads "
        "the upstream answer into one buffer sized from its Content-Length (adapters/upstream.py), decodes "
        "the JSON (the base64 stays text: a second copy, while the buffer is alive), then the client's "
        "answer is encoded anew (another, while the decoded one is alive); glibc keeps freed large blocks "
        "unless their mapping threshold is fixed (gateway/memory.py does, at startup)."
    )
    assert results.heavy is not None  # a worst row comes from it
    rows = sorted(results.heavy.memory["gateway"], key=lambda r: r.in_flight)
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        marginal = (last.growth - first.growth) / (last.in_flight - first.in_flight)
        text += (
            f" Each further request in flight adds less ({mib(marginal)}, "
            f"{marginal / first.answer_bytes:.1f}x the answer, from {first.in_flight} to "
            f"{last.in_flight} in flight): the single event loop does the copying of one answer at a time."
        )
    yield text
