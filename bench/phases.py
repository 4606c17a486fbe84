"""The phases of `make bench` and the tables derived from them.

(a) fixed rates, every path in interleaved rounds; (b) rate steps of each proxy against the
floor, up to the first rate not carried, and the most each path answers closed-loop;
(e) heavy answers: memory per request in flight and latency at a low rate; py-spy phases
of their own. Then the CPU and memory table, and the load generator's own health.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from bench.measure import Runner, pool, rss_tree
from bench.pyspy import fold
from bench.results import (
    Added,
    CpuMemoryRow,
    FixedRate,
    Heavy,
    HeavyMemory,
    LoadgenHealth,
    Phase,
    Pooled,
    Profile,
    Step,
    StepLadder,
    Steps,
)
from bench.stack import log, read_text

__all__ = ["PATHS", "Plan", "ProxyBench", "cpu_memory", "loadgen_health", "log_lines_per_request", "machine_shares"]

PATHS = ("floor", "gateway", "litellm")
PROXIES = ("gateway", "litellm")


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """Which phases a run has and how long each lasts (bench.proxy's options)."""

    duration: float = 5.0
    rounds: int = 3
    rates: tuple[float, ...] = (200.0, 50.0)
    steps: tuple[float, ...] = (200, 400, 600, 800, 1000, 1200, 1500, 2000)
    litellm_steps: tuple[float, ...] = (25, 50, 100, 150, 200)
    bound_ms: float = 10.0
    saturation_connections: int = 32
    heavy_rate: float = 2.0
    heavy_duration: float = 8.0
    heavy_concurrency: tuple[int, ...] = (1, 4)
    heavy_requests_per_client: int = 4
    heavy_n: int = 4  # images per heavy answer: 4 is 16 MiB of JSON, 2 is 8 MiB
    profile_rates: tuple[float, ...] = (200.0, 1000.0)


@dataclass
class ProxyBench(Runner):
    """The phases of `make bench`, run against floor, gateway and (when started) LiteLLM."""

    plan: Plan = field(default_factory=Plan)

    @property
    def paths(self) -> list[str]:
        return [p for p in PATHS if p != "litellm" or "litellm" in self.stack.services]

    @property
    def proxies(self) -> list[str]:
        return [p for p in self.paths if p != "floor"]

    # ----- (a) fixed rates, interleaved rounds

    def fixed_rates(self) -> dict[str, FixedRate]:
        return {f"{rate:g}": self.fixed_rate(rate) for rate in self.plan.rates}

    def fixed_rate(self, rate: float) -> FixedRate:
        rounds = self.rounds(self.paths, f"fixed {rate:g}/s", self.plan.rounds, rate=rate, duration=self.plan.duration)
        pooled = {p: pool([r[p] for r in rounds]) for p in self.paths}
        return FixedRate(rate=rate, pooled=pooled, rounds=rounds)

    # ----- (b) rate steps and the most answered

    def steps(self) -> Steps:
        floors: dict[float, Phase] = {}
        ladders = {"gateway": self.ladder("gateway", self.plan.steps, floors)}
        if "litellm" in self.paths:
            ladders["litellm"] = self.ladder("litellm", self.plan.litellm_steps, floors)
        saturation = {
            path: self.closed_loop(
                path, "most answered (closed loop)", self.plan.saturation_connections, self.plan.duration
            )
            for path in self.paths
        }
        return Steps(gateway=ladders["gateway"], litellm=ladders.get("litellm"), saturation=saturation)

    def ladder(self, path: str, rates: Sequence[float], floors: dict[float, Phase]) -> StepLadder:
        """Rate after rate up to the first not carried; then one more half-way back."""
        rows: list[Step] = []
        for rate in rates:
            rows.append(self._confirmed_step(path, rate, floors))
            if not rows[-1].passed:
                break
        middle = _half_way(rows)
        if middle is not None:
            rows.insert(-1, self._confirmed_step(path, middle, floors))
        carried = [row.rate for row in rows if row.passed]
        return StepLadder(rows=rows, carried=max(carried) if carried else 0.0)

    def _confirmed_step(self, path: str, rate: float, floors: dict[float, Phase]) -> Step:
        row = self._step(path, rate, floors)
        if not row.passed:  # the machine is shared: confirm a failure once before believing it
            log(f"{path} failed at {rate:g}/s ({row.why}); confirming once")
            row = self._step(path, rate, floors, retry=True)
        return row

    def _step(self, path: str, rate: float, floors: dict[float, Phase], retry: bool = False) -> Step:
        if rate not in floors or retry:
            floors[rate] = self.run("floor", f"step {rate:g}/s", rate=rate, duration=self.plan.duration)
        floor = floors[rate]
        result = self.run(path, f"step {rate:g}/s", rate=rate, duration=self.plan.duration)
        more = result.latency_ms.minus(floor.latency_ms)
        why = _step_failure(result, more, rate, self.plan.bound_ms)
        floor_ok = not floor.errors and floor.latency_ms.p99 <= self.plan.bound_ms
        return Step(
            rate=rate,
            passed=not why,
            why=why,
            added=more,
            floor_ok=floor_ok,
            result=result.compact(),
            floor=floor.compact(),
        )

    # ----- (e) heavy answers

    def heavy(self) -> Heavy:
        """Memory per heavy answer in flight (against each proxy's RSS before any), then latency at a low rate."""
        baseline = {p: rss_tree(self.stack.services[p].pid) for p in self.proxies}
        memory = {path: self._heavy_memories(path, baseline[path]) for path in self.proxies}
        latency = {
            path: self.run(
                path, "heavy latency", heavy=True, rate=self.plan.heavy_rate, duration=self.plan.heavy_duration
            ).compact()
            for path in self.paths
        }
        return Heavy(memory=memory, latency=latency)

    def _heavy_memories(self, path: str, baseline: int) -> list[HeavyMemory]:
        return [self._heavy_memory(path, clients, baseline) for clients in self.plan.heavy_concurrency]

    def _heavy_memory(self, path: str, clients: int, baseline: int) -> HeavyMemory:
        result = self.run(
            path,
            f"heavy memory, {clients} in flight",
            heavy=True,
            mode="closed",
            concurrency=clients,
            requests=clients * self.plan.heavy_requests_per_client,
            warmup_requests=0,
        )
        peak = result.proc[path].rss_peak
        growth = peak - baseline
        answer = result.answer_bytes or math.nan
        return HeavyMemory(
            in_flight=clients,
            baseline_rss=baseline,
            peak_rss=peak,
            growth=growth,
            per_in_flight=growth / clients,
            answer_bytes=answer,
            ratio=growth / clients / answer,
            result=result.compact(),
        )

    # ----- py-spy

    def profiles(self) -> list[Profile]:
        return [self.profile(rate) for rate in self.plan.profile_rates]

    def profile(self, rate: float) -> Profile:
        """py-spy on the gateway while it takes `rate` req/s (a phase of its own, not measured elsewhere)."""
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(spy).is_file():
            return Profile(rate=rate, error="py-spy not installed (pip install py-spy)")
        duration = max(3, round(self.plan.duration))
        raw = self.stack.workdir / f"gateway.pyspy.{rate:g}.txt"
        command = [spy, "record", "--pid", str(self.stack.services["gateway"].pid), "--duration", str(duration),
                   "--rate", "250", "--format", "raw", "--output", str(raw)]  # fmt: skip
        spy_process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)  # py-spy attaches; the load generator's start and warm-up take longer
        result = self.run("gateway", f"py-spy at {rate:g}/s", rate=rate, duration=duration, keep_latencies=False)
        _, err = spy_process.communicate(timeout=60)
        if not raw.is_file():
            return Profile(rate=rate, error=f"py-spy failed: {err.decode(errors='replace')[-500:]}")
        folded = msgspec.structs.asdict(fold(raw.read_text()))
        return Profile(rate=rate, result=result.compact(), **folded)


def _half_way(rows: Sequence[Step]) -> float | None:
    """A rate between the last one carried and the first one not carried, when there is room."""
    passed = [row.rate for row in rows if row.passed]
    if not rows or rows[-1].passed or not passed:
        return None
    low, high = max(passed), rows[-1].rate
    middle = round((low + high) / 2 / 50) * 50 if high - low > 100 else round((low + high) / 2)
    return middle if low < middle < high else None


def _step_failure(result: Phase, more: Added, rate: float, bound_ms: float) -> str:
    """Why a step is not carried ("" when it is)."""
    errors = sum(result.errors.values())
    if errors:
        return f"{errors} errors"
    if more.p99 > bound_ms:
        return f"p99 added {more.p99:.1f} ms > {bound_ms:g} ms"
    if result.achieved_rate < 0.95 * rate:
        return f"answered {result.achieved_rate:.0f}/s of {rate:g}/s"
    return ""


# --------------------------------------------------------------------------- derived tables


def cpu_memory(
    fixed: Mapping[str, FixedRate],
    steps: Steps,
    phases: Sequence[Phase],
    start_rss: Mapping[str, float],
    idle: Mapping[str, float],
) -> list[CpuMemoryRow]:
    """Rows of the CPU and memory table: label, unit, a value per proxy."""
    paths = [p for p in PROXIES if p in next(iter(fixed.values())).pooled]

    def row(label: str, kind: str, values: Mapping[str, float]) -> CpuMemoryRow:
        return CpuMemoryRow(label=label, kind=kind, **{p: values.get(p, math.nan) for p in paths})

    rows = [row("CPU while idle after warm-up (10 ms clock ticks over 5 s: ±2 ms/s)", "ms/s", idle)]
    for key, block in fixed.items():
        rows.append(row(f"CPU per request at {key} req/s", "ms", _own_cpu(block.pooled, paths)))
    rows.append(row("CPU per request, closed loop at saturation", "ms", _own_cpu(steps.saturation, paths)))
    rows.append(row("RSS after start and warm-up", "bytes", start_rss))
    rows.append(row("peak RSS, light phases", "bytes", _peaks(phases, paths, heavy=False)))
    rows.append(row("peak RSS, heavy phases", "bytes", _peaks(phases, paths, heavy=True)))
    return rows


def _own_cpu(results: Mapping[str, Pooled | Phase], paths: Sequence[str]) -> dict[str, float]:
    """Each proxy's own CPU per request (its process tree, not the emulator's)."""
    return {p: results[p].cpu_ms(p) for p in paths if p in results}


def _peaks(phases: Sequence[Phase], paths: Sequence[str], heavy: bool) -> dict[str, float]:
    peaks: dict[str, float] = {}
    for path in paths:
        values = [ph.proc[path].rss_peak for ph in phases if ph.path == path and ph.heavy == heavy]
        peaks[path] = max(values) if values else math.nan
    return peaks


def log_lines_per_request(log_path: Path, phases: Sequence[Phase]) -> float:
    """Lines the gateway logged per request it served (its log is a file of this run)."""
    served = sum(p.sent + p.spec.warmup_requests for p in phases if p.path == "gateway")
    lines = read_text(log_path).count("\n")
    return lines / served if served else math.nan


def loadgen_health(phases: Sequence[Phase], steps: Steps) -> LoadgenHealth:
    """The load generator's own cost and lateness in its busiest measured phases."""
    light = [p for p in phases if p.spec.mode == "open" and not p.heavy]
    top = max(p.spec.rate for p in light)
    busiest = [p for p in light if p.spec.rate == top]
    floor = steps.saturation.get("floor")
    return LoadgenHealth(
        rate=top,
        cpu_ms_per_request=sum(p.loadgen_cpu_s for p in busiest) * 1000 / max(1, sum(p.sent for p in busiest)),
        lag_p99_ms=max(p.lag_ms.p99 for p in busiest),
        floor_max=floor.achieved_rate if floor else math.nan,
    )


# The server processes each path's load runs through: the rest of the machine's busy time is others'.
OWN = {"floor": ("emulator",), "gateway": ("gateway", "emulator"), "litellm": ("litellm", "emulator")}


def machine_shares(phases: Sequence[Phase]) -> tuple[float, float]:
    """Mean busy cores of the whole machine over the measured phases, and the share of others."""
    measured = [p for p in phases if p.label != "warm-up" and not p.label.startswith("py-spy")]
    if not measured:
        return math.nan, math.nan
    busy = [p.system.busy_cores for p in measured]
    others = [
        p.system.busy_cores - sum(p.proc[n].cpu_util for n in OWN[p.path] if n in p.proc) - p.loadgen_cpu_s / p.window_s
        for p in measured
    ]
    return sum(busy) / len(busy), max(0.0, sum(others) / len(others))
