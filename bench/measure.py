"""Measuring: one load phase against one path, rounds pooled, and what the machine was doing.

A phase runs the load generator (`bench.loadgen`) in its own process, so that its CPU never
competes with the harness's, and reads its result back as a typed `Phase`. Every benchmark
(`bench.proxy`, `bench.servers`, `bench.portkey`) measures through a `Runner`; they differ
in their paths and in the phases they ask for.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from bench.loadgen import memory, process_tree, snapshot, summarize
from bench.results import GatewayStack, Machine, Phase, PhaseSpec, Pooled, ProcUse, RoundFigures, loads
from bench.stack import EMULATOR_KEY, HEAVY_MODEL, MODEL, ROOT, Stack, log, read_text

__all__ = [
    "PROMPT",
    "Destination",
    "Runner",
    "machine_info",
    "measure_idle",
    "pool",
    "request_body",
    "rss_tree",
]

PROMPT = "A lighthouse on a cliff at dusk, volumetric light"
ENDPOINT = "/v1/images/generations"


def request_body(heavy: bool, path: str, heavy_n: int = 4) -> str:
    """The request every phase sends: n=1 (an ~8 KB answer), or ``heavy_n`` incompressible PNGs when heavy."""
    model = MODEL if path == "floor" or not heavy else HEAVY_MODEL
    payload = {
        "model": model,
        "prompt": PROMPT,
        "size": "1024x1024",
        "n": heavy_n if heavy else 1,
        "response_format": "b64_json",
    }
    return json.dumps(payload)


@dataclass(frozen=True)
class Destination:
    """Where a path's requests go, with which headers, and which server processes to watch."""

    base_url: str
    headers: dict[str, str]
    watch: dict[str, int]


def _defaults(heavy: bool) -> dict[str, Any]:
    """Warm-up and connections: a heavy answer is 16 MiB, so few of them, one at a time."""
    if heavy:
        return {"warmup_requests": 3, "warmup_concurrency": 1, "connections": 4, "drain_s": 120.0}
    return {"warmup_requests": 100, "warmup_concurrency": 8, "connections": 32, "drain_s": 30.0}


@dataclass
class Runner:
    """Runs phases against the paths of a stack and keeps every phase it ran."""

    stack: Stack
    phases: list[Phase] = field(default_factory=list)
    heavy_n: int = 4  # images per heavy answer (4 MiB of base64 each)

    def target(self, path: str, heavy: bool) -> Destination:
        """floor: the emulator itself; gateway (or another gateway process, gateway-*) and litellm: the proxy."""
        services = self.stack.services
        emulator = services["emulator_noise" if heavy else "emulator"]
        if path == "floor":
            return Destination(
                emulator.base_url, {"Authorization": f"Bearer {EMULATOR_KEY}"}, {"emulator": emulator.pid}
            )
        key = self.stack.gateway_key if path.startswith("gateway") else self.stack.litellm_key
        watch = {path: services[path].pid, "emulator": emulator.pid}
        return Destination(services[path].base_url, {"Authorization": f"Bearer {key}"}, watch)

    def spec(self, path: str, heavy: bool, **overrides: Any) -> PhaseSpec:
        target = self.target(path, heavy)
        fields = {
            "url": target.base_url + ENDPOINT,
            "body": request_body(heavy, path, self.heavy_n),
            "headers": target.headers,
            "expect": '"b64_json"',
            "watch": target.watch,
            **_defaults(heavy),
            **overrides,
        }
        return msgspec.convert(fields, PhaseSpec)

    def run(self, path: str, label: str, heavy: bool = False, **overrides: Any) -> Phase:
        """One phase: the load generator in its own process, its result labelled and kept."""
        spec = self.spec(path, heavy, **overrides)
        started = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-m", "bench.loadgen"],
            input=msgspec.json.encode(spec).decode(),
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
            timeout=spec.duration + spec.drain_s + 120,
        )
        if out.returncode != 0:
            raise RuntimeError(f"load generator failed ({label}, {path}):\n{out.stderr[-4000:]}")
        phase = msgspec.structs.replace(
            loads(out.stdout, Phase), path=path, label=label, heavy=heavy, wall_s=time.monotonic() - started
        )
        self.phases.append(phase)
        log(_line(phase, overrides.get("rate", "closed")))
        return phase

    def warm_up(self, paths: Iterable[str], label: str = "warm-up") -> None:
        """Lazy imports, connection pools and caches, before anything is measured."""
        for path in paths:
            self.run(path, label, rate=100.0, duration=1.0, keep_latencies=False)

    def rounds(self, paths: Sequence[str], label: str, count: int, **overrides: Any) -> list[dict[str, Phase]]:
        """``count`` rounds of every path in turn (interleaved: a drift of the machine hits all alike)."""
        return [
            {path: self.run(path, f"{label} round {index + 1}", **overrides) for path in paths}
            for index in range(count)
        ]

    def closed_loop(self, path: str, label: str, clients: int, duration: float) -> Phase:
        """The most ``path`` answers at any latency: ``clients`` each sending again when answered."""
        return self.run(path, label, mode="closed", concurrency=clients, duration=duration, requests=0)


def _line(phase: Phase, rate: object) -> str:
    lat = phase.latency_ms
    errors = sum(phase.errors.values())
    return (
        f"{phase.label:<28} {phase.path:<8} rate={rate!s:<6} p50={lat.p50:.2f} p99={lat.p99:.2f} ms "
        f"ok={phase.ok} err={errors} achieved={phase.achieved_rate:.0f}/s "
        f"busy={phase.system.busy_cores:.2f} cores"
    )


# --------------------------------------------------------------------------- pooling


def pool(phases: Sequence[Phase]) -> Pooled:
    """Several rounds of one path as one: latencies pooled, CPU summed over answers."""
    answered = sum(p.ok + sum(p.errors.values()) for p in phases)
    window = sum(p.window_s for p in phases)
    errors: Counter[str] = Counter()
    for p in phases:
        errors.update(p.errors)
    return Pooled(
        latency_ms=summarize(x for p in phases for x in p.latencies_ms),
        errors=dict(errors),
        ok=sum(p.ok for p in phases),
        sent=sum(p.sent for p in phases),
        achieved_rate=answered / window if window else math.nan,
        proc={name: _pool_proc(phases, name, answered) for name in phases[0].proc},
        lag_ms_p99=max(p.lag_ms.p99 for p in phases),
        busy_cores=sum(p.system.busy_cores * p.window_s for p in phases) / window if window else math.nan,
        loadgen_cpu_ms_per_request=sum(p.loadgen_cpu_s for p in phases) * 1000 / max(1, answered),
        answer_bytes=phases[0].answer_bytes,
        per_round=[
            RoundFigures(p50=p.latency_ms.p50, p99=p.latency_ms.p99, busy_cores=p.system.busy_cores) for p in phases
        ],
    )


def _pool_proc(phases: Sequence[Phase], name: str, answered: int) -> ProcUse:
    cpu = sum(p.proc[name].cpu_s for p in phases)
    window = sum(p.window_s for p in phases)
    return ProcUse(
        cpu_s=cpu,
        cpu_ms_per_request=cpu * 1000 / max(1, answered),
        cpu_util=cpu / window if window else math.nan,
        rss_peak=max(p.proc[name].rss_peak for p in phases),
        rss_growth_peak=max(p.proc[name].rss_growth_peak for p in phases),
    )


# --------------------------------------------------------------------------- resources


def rss_tree(pid: int) -> int:
    """Resident memory of a process and its descendants, in bytes."""
    return sum(memory(p)[0] for p in process_tree(pid))


def measure_idle(stack: Stack, paths: Iterable[str], seconds: float) -> dict[str, float]:
    """CPU milliseconds per second each proxy uses with no traffic at all."""
    trees = {p: process_tree(stack.services[p].pid) for p in paths}
    before = {p: snapshot(t).cpu_s for p, t in trees.items()}
    time.sleep(seconds)
    return {p: (snapshot(t).cpu_s - before[p]) * 1000 / seconds for p, t in trees.items()}


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _cpu_model() -> str:
    lines = read_text("/proc/cpuinfo").splitlines()
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    return model or platform.processor() or "unknown"


def _mem_gib() -> float:
    lines = read_text("/proc/meminfo").splitlines()
    kib = next((int(line.split()[1]) for line in lines if line.startswith("MemTotal")), 0)
    return round(kib / 1024 / 1024, 1)


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 0


def gateway_stack() -> GatewayStack:
    """The versions the gateway runs on here, and whether uvicorn finds uvloop and httptools."""
    return GatewayStack(
        uvicorn=_version("uvicorn"),
        litestar=_version("litestar"),
        httpx=_version("httpx"),
        redis=_version("redis"),
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
    )


def machine_info() -> Machine:
    return Machine(
        date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        cpu_model=_cpu_model(),
        cores=os.cpu_count() or 0,
        cores_usable=_usable_cores(),
        mem_gib=_mem_gib(),
        kernel=platform.release(),
        python=platform.python_version(),
        loadavg_start=os.getloadavg(),
        gateway_stack=gateway_stack(),
    )
