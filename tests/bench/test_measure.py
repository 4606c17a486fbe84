"""The harness's measuring parts without servers: pooling rounds, the phases asked of each
path, the rate-step rules, py-spy's folding, and the tables derived from recorded phases."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec

from bench import servers
from bench.loadgen import summarize
from bench.measure import Runner, pool
from bench.phases import Plan, ProxyBench, _half_way, _step_failure, cpu_memory, loadgen_health, machine_shares
from bench.portkey import PortkeyRunner
from bench.pyspy import fold
from bench.results import Added, Folded, Phase, ProxyResults, Step, loads

ROOT = Path(__file__).resolve().parents[2]
RECORDED = Path(__file__).parent / "recorded"


def fake_stack(**services: tuple[str, int]) -> Any:
    """Just what a Runner reads of a stack: its services' URLs and pids, and the two keys."""
    found = {name: SimpleNamespace(base_url=url, pid=pid) for name, (url, pid) in services.items()}
    return SimpleNamespace(services=found, gateway_key="igw-k", litellm_key="sk-k")


def recorded_phases() -> list[Phase]:
    return loads((RECORDED / "quick.json").read_text(), ProxyResults).phases


def phase(latencies: list[float], cpu_s: float, errors: dict[str, int] | None = None, window: float = 1.0) -> Phase:
    base = recorded_phases()[0]
    proc = msgspec.structs.replace(base.proc["emulator"], cpu_s=cpu_s, rss_peak=int(cpu_s * 1000))
    return msgspec.structs.replace(
        base,
        latencies_ms=latencies,
        latency_ms=summarize(latencies),
        ok=len(latencies),
        errors=errors or {},
        window_s=window,
        proc={"emulator": proc},
    )


def test_no_module_of_bench_imports_the_test_package() -> None:
    for path in sorted((ROOT / "bench").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n == "tests" or n.startswith("tests.") for n in names), f"{path.name} imports {names}"


def test_rounds_pool_their_latencies_and_sum_their_cpu_over_answers() -> None:
    pooled = pool([phase([1.0, 2.0, 3.0], 0.3), phase([4.0], 0.1, errors={"HTTP 500": 1})])
    assert pooled.latency_ms.count == 4 and pooled.latency_ms.max == 4.0 and pooled.latency_ms.p50 == 2.0
    assert pooled.ok == 4 and pooled.errors == {"HTTP 500": 1}
    assert pooled.achieved_rate == 5 / 2.0  # 5 answered (errors too) over 2 s of window
    emulator = pooled.proc["emulator"]
    assert math.isclose(emulator.cpu_ms_per_request, 0.4 * 1000 / 5) and math.isclose(emulator.cpu_util, 0.2)
    assert emulator.rss_peak == 300
    assert [r.p50 for r in pooled.per_round] == [2.0, 4.0]


def test_each_path_is_sent_to_its_own_server_with_its_own_key() -> None:
    runner = Runner(fake_stack(emulator=("http://e", 1), emulator_noise=("http://n", 2), gateway=("http://g", 3)))
    floor = runner.spec("floor", heavy=False, rate=50.0)
    assert floor.url == "http://e/v1/images/generations" and floor.headers["Authorization"] == "Bearer test-key"
    assert floor.watch == {"emulator": 1} and floor.rate == 50.0 and floor.warmup_requests == 100
    heavy = runner.spec("gateway", heavy=True, mode="closed", concurrency=4)
    assert heavy.url.startswith("http://g/") and heavy.headers["Authorization"] == "Bearer igw-k"
    assert heavy.watch == {"gateway": 3, "emulator": 2}  # the noise emulator behind it
    assert json.loads(heavy.body)["n"] == 4 and json.loads(heavy.body)["model"] == "flux-schnell-noise"
    assert (heavy.mode, heavy.concurrency, heavy.warmup_requests, heavy.drain_s) == ("closed", 4, 3, 120.0)


def test_portkey_is_pointed_at_the_emulator_as_a_custom_openai_host() -> None:
    runner = PortkeyRunner(fake_stack(emulator=("http://127.0.0.1:9101", 11), portkey=("http://127.0.0.1:8787", 12)))
    target = runner.target("portkey", heavy=False)
    assert target.base_url == "http://127.0.0.1:8787" and target.watch == {"portkey": 12}
    assert target.headers["x-portkey-provider"] == "openai"
    assert target.headers["x-portkey-custom-host"] == "http://127.0.0.1:9101/v1"
    assert runner.target("floor", heavy=False).base_url == "http://127.0.0.1:9101"


def test_every_server_variant_serves_on_the_port_it_is_given(tmp_path: Path) -> None:
    found = servers.variants(tmp_path / "gateway.json", 4321)
    labels = [label for label, _, _ in found]
    assert labels[0].startswith("uvicorn, uvloop") and labels[-1].endswith("2 processes")
    for _, command, _ in found:
        assert command[command.index("--port") + 1] == "4321"


def step(rate: float, passed: bool) -> Step:
    base = recorded_phases()[0]
    added = Added(p50=0.0, p95=0.0, p99=0.0)
    return Step(rate=rate, passed=passed, why="", added=added, floor_ok=True, result=base, floor=base)


def test_after_the_first_rate_not_carried_one_more_step_goes_half_way_back() -> None:
    assert _half_way([step(200, True), step(400, True), step(600, False)]) == 500
    assert _half_way([step(800, True), step(1200, False)]) == 1000  # rounded to 50 over wide gaps
    assert _half_way([step(25, True), step(50, False)]) == 38  # narrow ones to 1 (round half to even)
    assert _half_way([step(200, True), step(400, True)]) is None  # all carried
    assert _half_way([step(200, False)]) is None  # nothing carried
    assert _half_way([step(200, True), step(201, False)]) is None  # no room


def test_a_step_is_not_carried_on_errors_then_on_the_bound_then_on_the_rate() -> None:
    base = recorded_phases()[0]
    quiet = Added(p50=1.0, p95=2.0, p99=3.0)
    assert _step_failure(base, quiet, base.spec.rate, 10.0) == ""
    slow = Added(p50=1.0, p95=2.0, p99=12.34)
    assert _step_failure(base, slow, base.spec.rate, 10.0) == "p99 added 12.3 ms > 10 ms"
    failing = msgspec.structs.replace(base, errors={"HTTP 429": 2, "HTTP 500": 1})
    assert _step_failure(failing, slow, base.spec.rate, 10.0) == "3 errors"
    assert _step_failure(base, quiet, base.achieved_rate * 2, 10.0).startswith("answered ")


def test_the_plan_is_bench_proxy_options_and_quick_shortens_it() -> None:
    from bench.proxy import parse_args, plan_of

    full, quick = plan_of(parse_args([])), plan_of(parse_args(["--quick"]))
    assert full == Plan()
    assert quick.rates == (200.0,) and quick.steps == (200, 400) and quick.rounds == 1 and quick.duration == 1.5
    assert quick.litellm_steps == (50,) and quick.heavy_concurrency == (4,)
    assert parse_args(["--quick"]).no_docs and not parse_args(["--quick", "--docs", "x.md"]).no_docs


def test_the_tables_derived_from_recorded_phases() -> None:
    results = loads((RECORDED / "quick.json").read_text(), ProxyResults)
    rss = results.cpu_memory[3].gateway
    rows = cpu_memory(results.fixed, results.steps, results.phases, {"gateway": rss}, {"gateway": 0.0})
    assert rows == results.cpu_memory  # the table of the recorded run, from its phases
    assert rows[1].gateway == results.fixed["200"].pooled["gateway"].cpu_ms("gateway")
    assert loadgen_health(results.phases, results.steps) == results.loadgen
    busy, others = machine_shares(results.phases)
    assert math.isclose(busy, results.meta.busy_cores_mean) and math.isclose(others, results.meta.others_cores_mean)


def test_proxy_bench_leaves_litellm_out_when_it_was_not_started() -> None:
    bench = ProxyBench(fake_stack(emulator=("http://e", 1), gateway=("http://g", 3)))
    assert bench.paths == ["floor", "gateway"] and bench.proxies == ["gateway"]


def test_fold_groups_py_spy_samples() -> None:
    folded = fold((RECORDED / "pyspy.raw.txt").read_text())
    recorded = msgspec.convert(json.loads((RECORDED / "pyspy.fold.json").read_text()), Folded)
    ties = sorted(recorded.top_inclusive)  # the old harness ordered ties by a set's (random) order
    assert msgspec.structs.replace(folded, top_inclusive=sorted(folded.top_inclusive)) == msgspec.structs.replace(
        recorded, top_inclusive=ties
    )
    assert folded.busy_samples == 100 and folded.idle_samples == 100
    shares = dict(folded.categories)
    assert shares["upstream client: httpx + httpcore (and h11, anyio under them)"] == 50
    assert shares["HTTP server: uvicorn (and its parser)"] == 30
    assert shares["gateway code (gateway/, adapters/, schemas/)"] == 20  # asyncio under it counts for it
    assert dict(folded.gateway_inclusive)["Router.generate (gateway/router.py)"] == 20  # as recorded (old path)
    assert folded.marks["httpcore_expiry_scan"] == 50 and folded.marks["socket_write"] == 30
