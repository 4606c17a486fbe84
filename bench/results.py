"""What the benchmarks measure, as typed records: one phase, pooled rounds, a whole run.

The load generator (`bench.loadgen`, its own process) prints a `PhaseResult`; the harness
labels it as a `Phase` and builds the run's `ProxyResults` from those. Every figure the
report prints is a field here, so a misspelt name fails in mypy, not in a KeyError at the
end of a ten-minute run.

The JSON is the standard library's (through `msgspec.to_builtins` and `msgspec.convert`),
not msgspec's own encoder: a phase without an answer has NaN percentiles, which msgspec's
JSON would write as null and then refuse to read back as a float.
"""

from __future__ import annotations

import json
import math
from typing import Any, TypeVar

import msgspec

__all__ = [
    "Added",
    "Assessment",
    "CpuMemoryRow",
    "FixedRate",
    "Folded",
    "GatewayStack",
    "Heavy",
    "HeavyMemory",
    "Latency",
    "LoadgenHealth",
    "Machine",
    "Meta",
    "Phase",
    "PhaseResult",
    "PhaseSpec",
    "Pooled",
    "PortkeyResults",
    "ProcUse",
    "Profile",
    "ProxyResults",
    "RoundFigures",
    "ServerRow",
    "Step",
    "StepLadder",
    "Steps",
    "SystemUse",
    "Target",
    "dumps",
    "loads",
]

T = TypeVar("T")
NAN = math.nan


# --------------------------------------------------------------------------- one phase


class PhaseSpec(msgspec.Struct, kw_only=True):
    """What the load generator sends and how.

    mode ``open``: ``rate`` requests/s for ``duration`` s, scheduled by time.
    mode ``closed``: ``concurrency`` clients, each sending its next request when the
    previous one is answered, ``requests`` in all (0: for ``duration`` s); this measures
    the most a server can answer, whatever the latency.
    """

    url: str
    body: str = "{}"
    headers: dict[str, str] = {}
    mode: str = "open"
    rate: float = 100.0
    duration: float = 5.0
    concurrency: int = 1
    requests: int = 0
    warmup_requests: int = 50  # sent closed-loop before the window, not measured
    warmup_concurrency: int = 8
    connections: int = 16  # opened before the window
    max_connections: int = 512  # beyond this many in flight, requests wait in the generator (time counted)
    drain_s: float = 30.0  # after the last send, how long answers may still take
    expect: str | None = None  # a substring every 200 answer must contain
    watch: dict[str, int] = {}  # name -> server pid to measure (CPU, memory)
    sample_interval_s: float = 0.02
    keep_latencies: bool = True


class Added(msgspec.Struct, kw_only=True):
    """Milliseconds a proxy adds to the floor's percentiles."""

    p50: float
    p95: float
    p99: float


class Latency(msgspec.Struct, kw_only=True):
    """Milliseconds: count, mean and nearest-rank percentiles (NaN when nothing was answered)."""

    count: int
    mean: float = NAN
    p50: float = NAN
    p90: float = NAN
    p95: float = NAN
    p99: float = NAN
    p999: float = NAN
    max: float = NAN

    def minus(self, floor: Latency) -> Added:
        """What a path adds to the floor's percentiles (read the p99 as how far the client's p99 moves)."""
        return Added(p50=self.p50 - floor.p50, p95=self.p95 - floor.p95, p99=self.p99 - floor.p99)


class ProcUse(msgspec.Struct, kw_only=True):
    """CPU and memory of one watched process tree over a measured window (or pooled windows)."""

    cpu_s: float
    cpu_ms_per_request: float
    cpu_util: float  # cores: CPU seconds per second of window
    rss_peak: int
    rss_growth_peak: int
    pids: list[int] = []
    rss_before: int = 0
    rss_after: int = 0
    hwm_after: int = 0
    hwm_reset: bool = False  # VmHWM was reset at the window's start: it is this window's peak
    rss_peak_sampled: int = 0


class SystemUse(msgspec.Struct, kw_only=True):
    """The whole machine's CPU use over a window."""

    busy_cores: float
    cores: int
    loadavg_1m: float = NAN


class PhaseResult(msgspec.Struct, kw_only=True):
    """What a phase measured (the load generator's output). Latencies in milliseconds, from
    the moment a request was issued to the arrival of its last byte; ``lag`` is how late the
    issue was against the schedule (the generator's own delay)."""

    spec: PhaseSpec  # its body and headers left out: the headers hold keys
    sent: int
    ok: int
    errors: dict[str, int]
    window_s: float
    send_window_s: float
    offered_rate: float
    achieved_rate: float  # answered (any status) per second over the whole window
    latency_ms: Latency
    lag_ms: Latency
    answer_bytes: float  # mean body size of the 200 answers
    connections_opened: int
    loadgen_cpu_s: float
    max_in_flight: int
    proc: dict[str, ProcUse] = {}  # per watched name
    system: SystemUse = msgspec.field(default_factory=lambda: SystemUse(busy_cores=NAN, cores=1))
    latencies_ms: list[float] = []


class Phase(PhaseResult, kw_only=True):
    """A phase of a run: the load generator's result, labelled with what the harness asked."""

    path: str = ""  # floor, gateway, litellm, portkey
    label: str = ""
    heavy: bool = False
    wall_s: float = 0.0

    def compact(self) -> Phase:
        """The same without its latency list (what the run keeps once the rounds are pooled)."""
        return msgspec.structs.replace(self, latencies_ms=[])

    def cpu_ms(self, name: str) -> float:
        """CPU per request of the watched process ``name`` (NaN when it was not watched)."""
        proc = self.proc.get(name)
        return proc.cpu_ms_per_request if proc else NAN


# --------------------------------------------------------------------------- pooled rounds


class RoundFigures(msgspec.Struct, kw_only=True):
    p50: float
    p99: float
    busy_cores: float


class Pooled(msgspec.Struct, kw_only=True):
    """Several rounds of one path as one: latencies pooled, CPU summed over answers."""

    latency_ms: Latency
    errors: dict[str, int]
    ok: int
    sent: int
    achieved_rate: float
    proc: dict[str, ProcUse]
    lag_ms_p99: float
    busy_cores: float
    loadgen_cpu_ms_per_request: float
    answer_bytes: float
    per_round: list[RoundFigures] = []

    def cpu_ms(self, name: str) -> float:
        proc = self.proc.get(name)
        return proc.cpu_ms_per_request if proc else NAN


# --------------------------------------------------------------------------- the proxy run


class FixedRate(msgspec.Struct, kw_only=True):
    """One fixed rate: every path, rounds interleaved, then pooled."""

    rate: float
    pooled: dict[str, Pooled]
    rounds: list[dict[str, Phase]] = []


class Step(msgspec.Struct, kw_only=True):
    """One rate step of one proxy, against the floor at the same rate."""

    rate: float
    passed: bool = msgspec.field(name="pass")
    why: str
    added: Added
    floor_ok: bool  # the floor itself stayed within the bound
    result: Phase
    floor: Phase


class StepLadder(msgspec.Struct, kw_only=True):
    rows: list[Step]
    carried: float  # the highest rate passed; 0 when none


class Steps(msgspec.Struct, kw_only=True):
    """The rate steps of each proxy and the closed-loop saturation of every path."""

    gateway: StepLadder
    litellm: StepLadder | None = None
    saturation: dict[str, Phase] = {}

    def ladders(self) -> dict[str, StepLadder]:
        """The proxies that were stepped, gateway first."""
        found = {"gateway": self.gateway, "litellm": self.litellm}
        return {path: ladder for path, ladder in found.items() if ladder is not None}


class HeavyMemory(msgspec.Struct, kw_only=True):
    """Peak memory of one proxy with ``in_flight`` heavy answers in flight."""

    in_flight: int
    baseline_rss: int
    peak_rss: int
    growth: int
    per_in_flight: float
    answer_bytes: float
    ratio: float  # per_in_flight / answer_bytes
    result: Phase | None = None


class Heavy(msgspec.Struct, kw_only=True):
    memory: dict[str, list[HeavyMemory]]
    latency: dict[str, Phase]


class Folded(msgspec.Struct, kw_only=True):
    """py-spy's samples of the gateway, folded: shares of the busy samples, in percent."""

    busy_samples: int = 0
    idle_samples: int = 0
    categories: list[tuple[str, float]] = []
    top_self: list[tuple[str, float]] = []
    top_inclusive: list[tuple[str, float]] = []
    gateway_inclusive: list[tuple[str, float]] = []
    marks: dict[str, float] = {}


class Profile(Folded, kw_only=True):
    """One py-spy phase: its rate, and its folded samples or why there are none."""

    rate: float
    error: str = ""
    result: Phase | None = None


class CpuMemoryRow(msgspec.Struct, kw_only=True):
    """A row of the CPU and memory table; ``kind`` is its unit (ms, ms/s, bytes)."""

    label: str
    kind: str
    gateway: float = NAN
    litellm: float = NAN


class LoadgenHealth(msgspec.Struct, kw_only=True):
    """The load generator's own cost and lateness in its busiest measured phases."""

    rate: float
    cpu_ms_per_request: float
    lag_p99_ms: float
    floor_max: float  # what the floor answered closed-loop


class GatewayStack(msgspec.Struct, kw_only=True):
    uvicorn: str
    litestar: str
    httpx: str
    redis: str
    loop: str
    http: str


class Machine(msgspec.Struct, kw_only=True):
    date: str
    cpu_model: str
    cores: int
    cores_usable: int
    mem_gib: float
    kernel: str
    python: str
    loadavg_start: tuple[float, float, float]
    gateway_stack: GatewayStack


class Meta(msgspec.Struct, kw_only=True):
    """How the run was made, and the machine's business while it ran."""

    command: str
    duration: float
    rounds: int
    bound_ms: float
    emulator_delay_ms: float
    heavy_rate: float
    saturation_connections: int
    litellm_missing: str  # why LiteLLM is not in the run ("" when it is)
    quick: bool
    upstream_transport: str = ""  # the gateway's upstream client ("" in runs recorded before it was kept)
    litellm_version: str = ""
    litellm_stack: dict[str, str] = {}
    log_lines_per_request: float = NAN
    busy_cores_mean: float = NAN
    others_cores_mean: float = NAN
    elapsed_s: float = NAN


class Target(msgspec.Struct, kw_only=True):
    target: str
    measured: str
    verdict: str


class Assessment(msgspec.Struct, kw_only=True):
    targets: list[Target]
    obstacles: list[str]


class ProxyResults(msgspec.Struct, kw_only=True):
    """Everything one `make bench` run measured, and what it makes of it."""

    meta: Meta
    machine: Machine
    fixed: dict[str, FixedRate]  # by rate as written in the report ("200")
    steps: Steps
    heavy: Heavy | None = None
    profiles: list[Profile] = []
    cpu_memory: list[CpuMemoryRow] = []
    loadgen: LoadgenHealth | None = None
    targets: list[Target] = []
    obstacles: list[str] = []
    phases: list[Phase] = []


# --------------------------------------------------------------------------- side benchmarks


class ServerRow(msgspec.Struct, kw_only=True):
    """One way of serving the gateway (`make bench-servers`)."""

    label: str
    added_p50: float
    added_p99: float
    errors: int
    cpu_ms: float
    saturation: float
    saturation_p50: float
    saturation_cpu_ms: float


class PortkeyResults(msgspec.Struct, kw_only=True):
    """`make bench-portkey`: pooled rounds per rate and path, and each proxy's closed loop."""

    fixed: dict[str, dict[str, Pooled]]
    saturation: dict[str, Phase]
    portkey_version: str
    node_version: str


# --------------------------------------------------------------------------- JSON


def dumps(value: Any, indent: int | None = None) -> str:
    """JSON that keeps NaN (as the standard library writes it)."""
    return json.dumps(msgspec.to_builtins(value), indent=indent)


def loads(text: str | bytes, into: type[T]) -> T:
    """Read what `dumps` (or the load generator) wrote, checked against ``into``."""
    return msgspec.convert(json.loads(text), into)
