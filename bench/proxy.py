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
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.upstream import TRANSPORTS
from bench.loadgen import summarize

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- proxy:start -->", "<!-- proxy:end -->"
DEFAULT_LITELLM_PYTHON = "bench/.venv-litellm/bin/python"
EMULATOR_KEY = "test-key"
MODEL = "flux-schnell"
HEAVY_MODEL = "flux-schnell-noise"  # the gateway's and LiteLLM's name for the noise emulator's flux-schnell
PROMPT = "A lighthouse on a cliff at dusk, volumetric light"
PATHS = ("floor", "gateway", "litellm")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


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
    add("--litellm-python", default=DEFAULT_LITELLM_PYTHON, help=f"LiteLLM's python (default {DEFAULT_LITELLM_PYTHON})")
    add("--no-litellm", action="store_true", help="leave LiteLLM out")
    add("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    add("--py-spy", action="store_true", help="also profile the gateway with py-spy, in phases of their own")
    add("--profile-rates", type=_floats, default=[200.0, 1000.0], help="rates of the py-spy phases (200,1000)")
    add("--quick", action="store_true", help="a smoke run: short phases, few steps, docs untouched")
    add("--docs", default=str(DOCS), help="the Markdown file to write the results into")
    add("--no-docs", action="store_true", help="do not write the docs")
    add("--json", dest="json_out", help="also write every result as JSON here")
    add("--upstream-transport", default="aiohttp", choices=TRANSPORTS, help="the gateway's upstream client")
    add("--keep-logs", action="store_true", help="keep the servers' logs (their directory is printed)")
    args = parser.parse_args(argv)
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


# --------------------------------------------------------------------------- machine


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def machine_info() -> dict[str, Any]:
    cpuinfo = _read("/proc/cpuinfo")
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "")
    mem_kb = next(
        (int(line.split()[1]) for line in _read("/proc/meminfo").splitlines() if line.startswith("MemTotal")), 0
    )
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count() or 0
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_model": model or platform.processor() or "unknown",
        "cores": os.cpu_count() or 0,
        "cores_usable": affinity,
        "mem_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
        "gateway_stack": {
            "uvicorn": _version("uvicorn"),
            "litestar": _version("litestar"),
            "httpx": _version("httpx"),
            "redis": _version("redis"),
            "loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
            "http": "httptools" if importlib.util.find_spec("httptools") else "h11",
        },
    }


# --------------------------------------------------------------------------- services


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_json(method: str, url: str, payload: Any = None, headers: dict[str, str] | None = None) -> Any:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


@dataclass
class Service:
    """A server this run started, in its own process group."""

    name: str
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; its log:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.base_url + path, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready within {timeout:g}s; its log:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(_read(str(self.log_path)).splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


def start_service(
    name: str, command: list[str], base_url: str, workdir: Path, env: dict[str, str] | None = None
) -> Service:
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # its own process group: stopped as a whole
        )
    return Service(name, process, base_url, log_path)


def litellm_version(python: str) -> str:
    out = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return out.stdout.strip() or "unknown"


def litellm_stack(python: str) -> dict[str, str]:
    code = (
        "import importlib.util as u, importlib.metadata as m;"
        "print(m.version('uvicorn'), 'uvloop' if u.find_spec('uvloop') else 'asyncio',"
        " 'httptools' if u.find_spec('httptools') else 'h11')"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    parts = out.stdout.split()
    return dict(zip(("uvicorn", "loop", "http"), parts, strict=False)) if len(parts) == 3 else {}


@dataclass
class Stack:
    """The emulators, the gateway and LiteLLM's proxy, started for one run."""

    args: argparse.Namespace
    workdir: Path
    services: dict[str, Service] = field(default_factory=dict)
    gateway_key: str = field(default_factory=lambda: "igw-bench-" + secrets.token_hex(8))
    litellm_key: str = field(default_factory=lambda: "sk-bench-" + secrets.token_hex(8))
    redis_prefix: str = field(default_factory=lambda: f"igw-bench-{secrets.token_hex(4)}:")
    litellm_python: str | None = None
    litellm_missing: str = ""

    def start(self) -> None:
        self._emulator("emulator", noise=False)
        self._emulator("emulator_noise", noise=True)
        self._gateway()
        if self.args.no_litellm:
            self.litellm_missing = "left out (--no-litellm)"
        else:
            self.litellm_python = self.args.litellm_python
            self._litellm(self.args.litellm_python)

    def _emulator(self, name: str, noise: bool) -> None:
        port = free_port()
        command = [sys.executable, "-m", "tests.emulators", "melious", "--port", str(port), "--no-call-log"]
        if noise:
            command.append("--noise")
        service = start_service(name, command, f"http://127.0.0.1:{port}", self.workdir)
        self.services[name] = service
        service.wait_ready("/_emulator/health", 30)
        delay = self.args.emulator_delay_ms / 1000.0
        http_json("POST", service.base_url + "/_emulator/faults", {"delay": delay, "times": None})

    def _gateway(self) -> None:
        from gateway.auth import hash_key

        port = free_port()
        config = {
            "server": {
                "host": "127.0.0.1",
                "port": port,
                "log_level": "info",
                "shutdown_grace_s": 2,
                "upstream_transport": self.args.upstream_transport,
            },
            "redis": {"url": self.args.redis_url, "key_prefix": self.redis_prefix},
            "auth": {
                "keys": [
                    {
                        "name": "bench",
                        "hash": hash_key(self.gateway_key),
                        "limits": {"requests": 1_000_000_000, "images": 4_000_000_000, "period_s": 60},
                    }
                ]
            },
            "image_store": {"path": str(self.workdir / "images")},
            "providers": {
                "melious": {"kind": "melious", "base_url": self.services["emulator"].base_url, "api_key": EMULATOR_KEY},
                "melious-noise": {
                    "kind": "melious",
                    "base_url": self.services["emulator_noise"].base_url,
                    "api_key": EMULATOR_KEY,
                },
            },
            "models": [
                {"name": MODEL, "targets": [{"provider": "melious", "model": MODEL}]},
                {"name": HEAVY_MODEL, "targets": [{"provider": "melious-noise", "model": MODEL}]},
            ],
        }
        path = self.workdir / "gateway.json"  # JSON is YAML
        path.write_text(json.dumps(config, indent=2))
        command = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(path), "--port", str(port)]
        service = start_service("gateway", command, f"http://127.0.0.1:{port}", self.workdir)
        self.services["gateway"] = service
        service.wait_ready("/ready", 60)

    def _litellm(self, python: str) -> None:
        port = free_port()

        def entry(name: str, emulator: str) -> dict[str, Any]:
            return {
                "model_name": name,
                "litellm_params": {
                    "model": f"openai/{MODEL}",
                    "api_base": self.services[emulator].base_url + "/v1",
                    "api_key": EMULATOR_KEY,
                    # LiteLLM picks its OpenAI image parameters by model name; for a name it does
                    # not know it uses gpt-image's, which refuse `response_format`. dall-e-2's
                    # accept response_format and n, and the emulator still sees `flux-schnell`.
                    "base_model": "dall-e-2",
                },
            }

        config = {
            "model_list": [entry(MODEL, "emulator"), entry(HEAVY_MODEL, "emulator_noise")],
            "litellm_settings": {
                "telemetry": False,
                "success_callback": [],
                "failure_callback": [],
                "callbacks": [],
                "cache": False,
            },
            "general_settings": {"master_key": self.litellm_key, "disable_spend_logs": True},
        }
        path = self.workdir / "litellm.json"
        path.write_text(json.dumps(config, indent=2))
        script = Path(python).parent / "litellm"
        launcher = [str(script)] if script.is_file() else [python, "-m", "litellm.proxy.proxy_cli"]
        command = [*launcher, "--config", str(path), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
        env = {
            "LITELLM_LOG": "ERROR",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the cost map at start
            "LITELLM_TELEMETRY": "False",
            "DISABLE_ADMIN_UI": "True",
        }
        service = start_service("litellm", command, f"http://127.0.0.1:{port}", self.workdir, env)
        self.services["litellm"] = service
        service.wait_ready("/health/liveliness", 120)

    def stop(self) -> None:
        for service in reversed(list(self.services.values())):
            service.stop()
        self._clean_redis()

    def _clean_redis(self) -> None:
        try:
            import redis

            client = redis.Redis.from_url(self.args.redis_url, socket_timeout=2)
            keys = list(client.scan_iter(match=self.redis_prefix + "*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()
        except Exception as exc:  # cleaning is best effort
            log(f"could not clean the Redis keys {self.redis_prefix}*: {exc}")


# --------------------------------------------------------------------------- phases


def body(heavy: bool, path: str) -> str:
    model = MODEL if path == "floor" or not heavy else HEAVY_MODEL
    payload = {
        "model": model,
        "prompt": PROMPT,
        "size": "1024x1024",
        "n": 4 if heavy else 1,
        "response_format": "b64_json",
    }
    return json.dumps(payload)


@dataclass
class Bench:
    args: argparse.Namespace
    stack: Stack
    phases: list[dict[str, Any]] = field(default_factory=list)

    @property
    def paths(self) -> list[str]:
        return [p for p in PATHS if p != "litellm" or "litellm" in self.stack.services]

    def target(self, path: str, heavy: bool) -> tuple[str, dict[str, str], dict[str, int]]:
        services = self.stack.services
        emulator = services["emulator_noise" if heavy else "emulator"]
        if path == "floor":
            return emulator.base_url, {"Authorization": f"Bearer {EMULATOR_KEY}"}, {"emulator": emulator.pid}
        key = self.stack.gateway_key if path == "gateway" else self.stack.litellm_key
        watch = {path: services[path].pid, "emulator": emulator.pid}
        return services[path].base_url, {"Authorization": f"Bearer {key}"}, watch

    def run(self, path: str, label: str, heavy: bool = False, **spec: Any) -> dict[str, Any]:
        """One phase: the load generator in its own process, its result as a dict."""
        base, headers, watch = self.target(path, heavy)
        full = {
            "url": base + "/v1/images/generations",
            "body": body(heavy, path),
            "headers": headers,
            "expect": '"b64_json"',
            "watch": watch,
            "warmup_requests": 3 if heavy else 100,
            "warmup_concurrency": 1 if heavy else 8,
            "connections": 4 if heavy else 32,
            "drain_s": 120.0 if heavy else 30.0,
            **spec,
        }
        started = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-m", "bench.loadgen"],
            input=json.dumps(full),
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
            timeout=full.get("duration", 5) + full["drain_s"] + 120,
        )
        if out.returncode != 0:
            raise RuntimeError(f"load generator failed ({label}, {path}):\n{out.stderr[-4000:]}")
        result: dict[str, Any] = json.loads(out.stdout)
        result.update(path=path, label=label, heavy=heavy, wall_s=time.monotonic() - started)
        self.phases.append(result)
        lat = result["latency_ms"]
        errors = sum(result["errors"].values())
        rate = spec.get("rate", "closed")
        log(
            f"{label:<28} {path:<8} rate={rate!s:<6} p50={lat['p50']:.2f} p99={lat['p99']:.2f} ms "
            f"ok={result['ok']} err={errors} achieved={result['achieved_rate']:.0f}/s "
            f"busy={result['system']['busy_cores']:.2f} cores"
        )
        return result

    # ----- (a) fixed rates, interleaved rounds

    def fixed_rates(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for rate in self.args.rates:
            rounds: list[dict[str, dict[str, Any]]] = []
            for index in range(self.args.rounds):
                rounds.append(
                    {
                        path: self.run(
                            path, f"fixed {rate:g}/s round {index + 1}", rate=rate, duration=self.args.duration
                        )
                        for path in self.paths
                    }
                )
            out[f"{rate:g}"] = {
                "rate": rate,
                "pooled": {p: pool([r[p] for r in rounds]) for p in self.paths},
                "rounds": rounds,
            }
        return out

    # ----- (b) rate steps and the most answered

    def steps(self) -> dict[str, Any]:
        floors: dict[float, dict[str, Any]] = {}
        out: dict[str, Any] = {}
        plans = [("gateway", self.args.steps)]
        if "litellm" in self.paths:
            plans.append(("litellm", self.args.litellm_steps))
        for path, rates in plans:
            rows = []
            for rate in rates:
                row = self._confirmed_step(path, rate, floors)
                rows.append(row)
                if not row["pass"]:
                    break
            passed = [row["rate"] for row in rows if row["pass"]]
            if rows and not rows[-1]["pass"] and passed:
                # one more step half-way between the last rate carried and the first one not carried
                low, high = max(passed), rows[-1]["rate"]
                middle = round((low + high) / 2 / 50) * 50 if high - low > 100 else round((low + high) / 2)
                if low < middle < high:
                    rows.insert(-1, self._confirmed_step(path, middle, floors))
            carried = [row["rate"] for row in rows if row["pass"]]
            out[path] = {"rows": rows, "carried": max(carried) if carried else 0.0}
        out["saturation"] = {
            path: self.run(
                path,
                "most answered (closed loop)",
                mode="closed",
                concurrency=self.args.saturation_connections,
                duration=self.args.duration,
                requests=0,
            )
            for path in self.paths
        }
        return out

    def _confirmed_step(self, path: str, rate: float, floors: dict[float, dict[str, Any]]) -> dict[str, Any]:
        row = self._step(path, rate, floors)
        if not row["pass"]:  # the machine is shared: confirm a failure once before believing it
            log(f"{path} failed at {rate:g}/s ({row['why']}); confirming once")
            row = self._step(path, rate, floors, retry=True)
        return row

    def _step(self, path: str, rate: float, floors: dict[float, dict[str, Any]], retry: bool = False) -> dict[str, Any]:
        if rate not in floors or retry:
            floors[rate] = self.run("floor", f"step {rate:g}/s", rate=rate, duration=self.args.duration)
        floor = floors[rate]
        result = self.run(path, f"step {rate:g}/s", rate=rate, duration=self.args.duration)
        added = {q: result["latency_ms"][q] - floor["latency_ms"][q] for q in ("p50", "p95", "p99")}
        errors = sum(result["errors"].values())
        why = ""
        if errors:
            why = f"{errors} errors"
        elif added["p99"] > self.args.bound_ms:
            why = f"p99 added {added['p99']:.1f} ms > {self.args.bound_ms:g} ms"
        elif result["achieved_rate"] < 0.95 * rate:
            why = f"answered {result['achieved_rate']:.0f}/s of {rate:g}/s"
        floor_ok = not floor["errors"] and floor["latency_ms"]["p99"] <= self.args.bound_ms
        return {
            "rate": rate,
            "pass": not why,
            "why": why,
            "added": added,
            "floor_ok": floor_ok,
            "result": compact(result),
            "floor": compact(floor),
        }

    # ----- (e) heavy answers

    def heavy(self) -> dict[str, Any]:
        services = self.stack.services
        baseline = {p: _rss_tree(services[p].pid) for p in self.paths if p != "floor"}
        memory: dict[str, list[dict[str, Any]]] = {}
        for path in self.paths:
            if path == "floor":
                continue
            memory[path] = []
            for clients in self.args.heavy_concurrency:
                result = self.run(
                    path,
                    f"heavy memory, {clients} in flight",
                    heavy=True,
                    mode="closed",
                    concurrency=clients,
                    requests=clients * self.args.heavy_requests_per_client,
                    warmup_requests=0,
                )
                proc = result["proc"][path]
                growth = proc["rss_peak"] - baseline[path]
                answer = result["answer_bytes"] or math.nan
                memory[path].append(
                    {
                        "in_flight": clients,
                        "baseline_rss": baseline[path],
                        "peak_rss": proc["rss_peak"],
                        "growth": growth,
                        "per_in_flight": growth / clients,
                        "answer_bytes": answer,
                        "ratio": growth / clients / answer,
                        "result": compact(result),
                    }
                )
        latency = {
            path: self.run(
                path, "heavy latency", heavy=True, rate=self.args.heavy_rate, duration=self.args.heavy_duration
            )
            for path in self.paths
        }
        return {"memory": memory, "latency": {p: compact(r) for p, r in latency.items()}}

    # ----- py-spy

    def profiles(self) -> list[dict[str, Any]]:
        return [self.profile(rate) for rate in self.args.profile_rates]

    def profile(self, rate: float) -> dict[str, Any]:
        """py-spy on the gateway while it takes `rate` req/s (a phase of its own, not measured elsewhere)."""
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(spy).is_file():
            return {"rate": rate, "error": "py-spy not installed (pip install py-spy)"}
        duration = max(3, round(self.args.duration))
        raw = self.stack.workdir / f"gateway.pyspy.{rate:g}.txt"
        command = [spy, "record", "--pid", str(self.stack.services["gateway"].pid), "--duration", str(duration),
                   "--rate", "250", "--format", "raw", "--output", str(raw)]  # fmt: skip
        spy_process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)  # py-spy attaches; the load generator's start and warm-up take longer
        result = self.run("gateway", f"py-spy at {rate:g}/s", rate=rate, duration=duration, keep_latencies=False)
        _, err = spy_process.communicate(timeout=60)
        if not raw.is_file():
            return {"rate": rate, "error": f"py-spy failed: {err.decode(errors='replace')[-500:]}"}
        return {"rate": rate, **fold(raw.read_text()), "result": compact(result)}


def _rss_tree(pid: int) -> int:
    from bench.loadgen import _memory, process_tree

    return sum(_memory(p)[0] for p in process_tree(pid))


def compact(result: dict[str, Any]) -> dict[str, Any]:
    """A phase result without its latency list."""
    return {k: v for k, v in result.items() if k != "latencies_ms"}


def pool(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Several rounds of one path as one: latencies pooled, CPU summed over answers."""
    latencies = [x for r in results for x in r["latencies_ms"]]
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r["errors"])
    answered = sum(r["ok"] + sum(r["errors"].values()) for r in results)
    proc: dict[str, Any] = {}
    for name in results[0]["proc"]:
        cpu = sum(r["proc"][name]["cpu_s"] for r in results)
        window = sum(r["window_s"] for r in results)
        proc[name] = {
            "cpu_s": cpu,
            "cpu_ms_per_request": cpu * 1000 / max(1, answered),
            "cpu_util": cpu / window if window else math.nan,
            "rss_peak": max(r["proc"][name]["rss_peak"] for r in results),
            "rss_growth_peak": max(r["proc"][name]["rss_growth_peak"] for r in results),
        }
    window = sum(r["window_s"] for r in results)
    return {
        "latency_ms": summarize(latencies),
        "errors": dict(errors),
        "ok": sum(r["ok"] for r in results),
        "sent": sum(r["sent"] for r in results),
        "achieved_rate": answered / window if window else math.nan,
        "proc": proc,
        "lag_ms_p99": max(r["lag_ms"]["p99"] for r in results),
        "busy_cores": sum(r["system"]["busy_cores"] * r["window_s"] for r in results) / window if window else math.nan,
        "loadgen_cpu_ms_per_request": sum(r["loadgen_cpu_s"] for r in results) * 1000 / max(1, answered),
        "answer_bytes": results[0]["answer_bytes"],
        "per_round": [
            {"p50": r["latency_ms"]["p50"], "p99": r["latency_ms"]["p99"], "busy_cores": r["system"]["busy_cores"]}
            for r in results
        ],
    }


# --------------------------------------------------------------------------- profiles

# A sample goes to the innermost frame on its stack that belongs to one of these; frames of other
# libraries (h11, anyio, sniffio, asyncio...) count for whoever called them.
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("HTTP server: uvicorn (and its parser)", ("uvicorn/",)),
    ("Litestar (routing, request, response, middleware)", ("litestar/",)),
    ("upstream client: httpx + httpcore (and h11, anyio under them)", ("httpx/", "httpcore/", "httpx_aiohttp/")),
    ("upstream client: aiohttp (and multidict, yarl)", ("aiohttp/", "multidict/", "yarl/")),
    ("Redis client (rate limit)", ("redis/",)),
    ("logging: structlog", ("structlog/", "logging/")),
    ("metrics: prometheus_client", ("prometheus_client/",)),
    ("retries: tenacity", ("tenacity/",)),
    ("gateway code (gateway/, adapters/, schemas/)", ("gateway/", "adapters/", "schemas/")),
    ("msgspec (JSON)", ("msgspec",)),
]


# Frames worth naming in the obstacles: (name, frame prefix); their inclusive share is reported.
MARKS: list[tuple[str, str]] = [
    ("httpcore_expiry_scan", "AsyncHTTP11Connection.has_expired (httpcore/"),
    ("sniffio_lookup", "current_async_library (sniffio/"),
    ("structlog", "BoundLoggerLazyProxy"),
    ("redis_limiter", "RedisLimiter.check (gateway/ratelimit.py"),
    ("log_middleware", "RequestIdMiddleware.__call__ (gateway/logs.py"),
    ("upstream_call", "HttpAdapter._send (adapters/http.py"),
    ("upstream_client", "AiohttpUpstream.send (adapters/upstream.py"),
]
SELF_MARKS: list[tuple[str, str]] = [("socket_write", "_SelectorSocketTransport.write (asyncio/")]


# The frames that start the server: on every stack, so they say nothing about where time goes.
BOOTSTRAP = (
    "<module>", "main (gateway/cli.py", "_serve (gateway/cli.py", "run (uvicorn/main.py", "Server.run",
    "asyncio_run", "Runner.run", "BaseEventLoop.run", "Handle._run", "_run_once", "_run_module_as_main",
    "_run_code (<frozen runpy>", "Server.serve (uvicorn/", "Server._serve (uvicorn/", "run (asyncio/runners.py",
)  # fmt: skip


def _category(frames: list[str]) -> str:
    for frame in reversed(frames):  # innermost first: whose call is this time spent in
        if frame.startswith(BOOTSTRAP):
            continue
        where = frame[frame.rfind("(") + 1 :]
        for name, needles in CATEGORIES:
            if any(needle in where for needle in needles):
                return name
    return "event loop (uvloop's C code or asyncio), sockets, the rest of the stdlib"


def _function(frame: str) -> str:
    """`name (path:line)` without the line, so that a function's lines count together."""
    head, _, where = frame.rpartition(" (")
    return f"{head} ({where.rsplit(':', 1)[0]})" if where else frame


def fold(raw: str) -> dict[str, Any]:
    """py-spy's raw (collapsed) stacks: busy samples by category, top self and inclusive frames."""
    by_self: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    total = idle = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        leaf = frames[-1]
        if leaf.startswith(("select (selectors.py", "EpollSelector.select", "wait (threading.py", "Condition.wait")):
            idle += count  # waiting in epoll or on a lock: not work
            continue
        total += count
        by_self[leaf] += count
        for function in {_function(frame) for frame in frames}:
            inclusive[function] += count
        categories[_category(frames)] += count
    share = (lambda n: 100.0 * n / total) if total else (lambda n: math.nan)
    marks = {name: share(sum(n for f, n in inclusive.items() if f.startswith(prefix))) for name, prefix in MARKS}
    marks |= {name: share(sum(n for f, n in by_self.items() if f.startswith(prefix))) for name, prefix in SELF_MARKS}
    marks["async_bookkeeping"] = share(
        sum(
            n
            for f, n in by_self.items()
            if f.startswith("current_task (asyncio/") or "(anyio/" in f or "(sniffio/" in f
        )
    )
    ours = ("(gateway/", "(adapters/", "(schemas/")
    return {
        "busy_samples": total,
        "idle_samples": idle,
        "categories": [(name, share(n)) for name, n in categories.most_common()],
        "top_self": [(frame, share(n)) for frame, n in by_self.most_common(15)],
        "top_inclusive": [(f, share(n)) for f, n in inclusive.most_common(80) if not f.startswith(BOOTSTRAP)][:20],
        "gateway_inclusive": [
            (f, share(n))
            for f, n in inclusive.most_common()
            if any(o in f for o in ours) and not f.startswith(BOOTSTRAP) and "(gateway/cli.py" not in f
        ][:12],
        "marks": marks,
    }


# --------------------------------------------------------------------------- report


def ms(value: float, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def mib(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value / 1024 / 1024:.1f} MiB"


def ratio(a: float, b: float) -> str:
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b <= 0:
        return "-"
    return f"{a / b:.1f}x"


def _errors(errors: dict[str, int]) -> str:
    total = sum(errors.values())
    return "0" if not total else f"{total} ({', '.join(f'{k}: {v}' for k, v in sorted(errors.items()))})"


def _cpu(result: dict[str, Any], name: str) -> float:
    proc = result.get("proc", {}).get(name)
    return proc["cpu_ms_per_request"] if proc else math.nan


def render(results: dict[str, Any]) -> str:
    """The Markdown block for docs/benchmarks.md (and stdout)."""
    meta, machine = results["meta"], results["machine"]
    stack = machine["gateway_stack"]
    lt = meta.get("litellm_stack") or {}
    lines: list[str] = []
    add = lines.append
    add("## Proxy overhead: image-gateway against LiteLLM (`make bench`)")
    add("")
    add(
        f"Run {machine['date']} on {machine['cpu_model']}, {machine['cores']} cores "
        f"({machine['cores_usable']} usable), "
        f"{machine['mem_gib']} GiB, Linux {machine['kernel']}. Load average at the start "
        f"{machine['loadavg_start'][0]:.2f}; the machine is shared, and during the measured phases the whole machine "
        f"was busy {meta['busy_cores_mean']:.2f} of {machine['cores']} cores on average, of which "
        f"{meta['others_cores_mean']:.2f} by processes other than the servers measured and the load generator "
        "(Redis among them)."
    )
    add(
        f"Python {machine['python']}. image-gateway: one uvicorn {stack['uvicorn']} worker ({stack['loop']} loop, "
        f"{stack['http']} HTTP parser), Litestar {stack['litestar']}, httpx {stack['httpx']}, "
        f"redis-py {stack['redis']}, "
        f"Redis rate limiting on (an inbound key with a limit), logs at `info` to a file. "
        + (
            f"LiteLLM {meta['litellm_version']} proxy (`litellm --num_workers 1`: uvicorn {lt.get('uvicorn', '?')}, "
            f"{lt.get('loop', '?')} loop, {lt.get('http', '?')} parser), master key set, no database, no callbacks."
            if meta.get("litellm_version")
            else f"LiteLLM: {meta['litellm_missing']}."
        )
    )
    add(
        f"Command: `{meta['command']}`: {meta['duration']:g} s per phase, {meta['rounds']} interleaved rounds per "
        f"fixed rate; emulator latency fixed at {meta['emulator_delay_ms']:g} ms; "
        f"total {meta['elapsed_s'] / 60:.1f} min."
    )
    add("")
    add(
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
    add("")

    # (a) fixed rates
    add("### Added latency at a fixed rate")
    add("")
    add("| rate | path | p50 | p95 | p99 | max | added p50 | added p95 | added p99 | errors | CPU per request |")
    add("|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for key, block in results["fixed"].items():
        pooled = block["pooled"]
        floor = pooled["floor"]["latency_ms"]
        for path in pooled:
            lat = pooled[path]["latency_ms"]
            added = [lat[q] - floor[q] if path != "floor" else math.nan for q in ("p50", "p95", "p99")]
            cpu = (
                pooled[path]["proc"]
                .get(path if path != "floor" else "emulator", {})
                .get("cpu_ms_per_request", math.nan)
            )
            add(
                f"| {key}/s | {path} | {ms(lat['p50'])} | {ms(lat['p95'])} | {ms(lat['p99'])} | {ms(lat['max'])} | "
                f"{ms(added[0])} | {ms(added[1])} | {ms(added[2])} | {_errors(pooled[path]['errors'])} | "
                f"{ms(cpu)} ms{' (emulator)' if path == 'floor' else ''} |"
            )
    add("")
    add("Latencies in ms. Ratios (pooled rounds):")
    add("")
    for key, block in results["fixed"].items():
        pooled = block["pooled"]
        floor = pooled["floor"]["latency_ms"]
        gw = pooled["gateway"]["latency_ms"]
        text = (
            f"- {key}/s: through the gateway p50 is {ratio(gw['p50'], floor['p50'])} the floor's, p99 "
            f"{ratio(gw['p99'], floor['p99'])}"
        )
        if "litellm" in pooled:
            li = pooled["litellm"]["latency_ms"]
            add_gw = {q: gw[q] - floor[q] for q in ("p50", "p99")}
            add_li = {q: li[q] - floor[q] for q in ("p50", "p99")}
            text += (
                f"; through LiteLLM {ratio(li['p50'], floor['p50'])} and {ratio(li['p99'], floor['p99'])}. "
                f"LiteLLM adds {ratio(add_li['p50'], add_gw['p50'])} the gateway's added p50 and "
                f"{ratio(add_li['p99'], add_gw['p99'])} its added p99"
            )
            gw_cpu, li_cpu = pooled["gateway"]["proc"]["gateway"], pooled["litellm"]["proc"]["litellm"]
            text += f"; {ratio(li_cpu['cpu_ms_per_request'], gw_cpu['cpu_ms_per_request'])} its CPU per request"
        rounds = block["rounds"]
        if len(rounds) > 1:
            per50 = [r["gateway"]["latency_ms"]["p50"] - r["floor"]["latency_ms"]["p50"] for r in rounds]
            per99 = [r["gateway"]["latency_ms"]["p99"] - r["floor"]["latency_ms"]["p99"] for r in rounds]
            text += (
                f". Gateway added p50 per round: {', '.join(ms(x) for x in per50)} ms; added p99 per round: "
                f"{', '.join(ms(x) for x in per99)} ms"
            )
        add(text + ".")
    add("")

    # (b) steps
    steps = results["steps"]
    add(f"### Highest rate one worker carries (added p99 ≤ {meta['bound_ms']:g} ms, no errors)")
    add("")
    add(
        "| path | rate | floor p99 | p50 | p99 | added p99 | answered/s | errors | proxy CPU (cores) "
        "| CPU per request | verdict |"
    )
    add("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|")
    for path in ("gateway", "litellm"):
        if path not in steps:
            continue
        for row in steps[path]["rows"]:
            res, floor = row["result"], row["floor"]
            proc = res["proc"][path]
            verdict = "carried" if row["pass"] else f"not carried: {row['why']}"
            if not row["floor_ok"]:
                verdict += " (the floor itself missed the bound: the emulator or the machine is the limit here)"
            add(
                f"| {path} | {row['rate']:g}/s | {ms(floor['latency_ms']['p99'])} | {ms(res['latency_ms']['p50'])} | "
                f"{ms(res['latency_ms']['p99'])} | {ms(row['added']['p99'])} | {res['achieved_rate']:.0f} | "
                f"{_errors(res['errors'])} | {proc['cpu_util']:.2f} | {ms(proc['cpu_ms_per_request'])} ms | {verdict} |"
            )
    add("")
    sat = steps.get("saturation", {})
    parts = []
    for path in ("gateway", "litellm"):
        if path not in steps:
            continue
        if steps[path]["carried"]:
            parts.append(f"{path} carried {steps[path]['carried']:g} req/s")
        else:
            parts.append(f"{path} not even at its lowest step ({steps[path]['rows'][0]['rate']:g} req/s)")
    if "litellm" in steps and steps["litellm"]["carried"] and steps["gateway"]["carried"]:
        parts.append(f"{ratio(steps['gateway']['carried'], steps['litellm']['carried'])} LiteLLM's")
    add("Within the bound: " + "; ".join(parts) + ".")
    if sat:
        cells = [
            f"{path} {sat[path]['achieved_rate']:.0f}/s (p50 {ms(sat[path]['latency_ms']['p50'])} ms)" for path in sat
        ]
        add(
            f"Most answered at any latency ({meta['saturation_connections']} closed-loop clients, "
            f"{meta['duration']:g} s): " + ", ".join(cells) + "."
        )
    add("")

    # (c, d) CPU and memory
    add("### CPU per request and memory")
    add("")
    add("| | gateway | LiteLLM | LiteLLM / gateway |")
    add("|---|---:|---:|---:|")
    for row in results["cpu_memory"]:
        fmt = mib if row["kind"] == "bytes" else (lambda v, unit=row["kind"]: f"{ms(v)} {unit}")
        g, li = row.get("gateway", math.nan), row.get("litellm", math.nan)
        add(f"| {row['label']} | {fmt(g)} | {fmt(li)} | {ratio(li, g)} |")
    add("")
    gen = results["loadgen"]
    add(
        f"The load generator is not the limit: at its busiest (the {gen['rate']:g} req/s phases) it used "
        f"{gen['cpu_ms_per_request']:.3f} ms of CPU per request and issued its requests at most "
        f"{gen['lag_p99_ms']:.2f} ms late (p99); the floor answered {gen['floor_max']:.0f} req/s closed-loop, so "
        "neither it nor the emulator bounds the proxies' figures."
    )
    add("")

    # (e) heavy
    heavy = results.get("heavy")
    if heavy:
        answer = next((r["answer_bytes"] for rows in heavy["memory"].values() for r in rows), math.nan)
        add(f"### Heavy answers: n=4 at 1024x1024, incompressible PNGs ({mib(answer)} of JSON per answer)")
        add("")
        add("| path | rate | p50 | p95 | p99 | added p50 | added p99 | errors | CPU per request |")
        add("|---|---:|---:|---:|---:|---:|---:|---|---:|")
        floor = heavy["latency"]["floor"]["latency_ms"]
        for path, res in heavy["latency"].items():
            lat = res["latency_ms"]
            cpu = _cpu(res, path if path != "floor" else "emulator")
            heavy_added = [lat[q] - floor[q] if path != "floor" else math.nan for q in ("p50", "p99")]
            add(
                f"| {path} | {meta['heavy_rate']:g}/s | {ms(lat['p50'], 1)} | {ms(lat['p95'], 1)} | "
                f"{ms(lat['p99'], 1)} | "
                f"{ms(heavy_added[0], 1)} | {ms(heavy_added[1], 1)} | {_errors(res['errors'])} | {ms(cpu, 1)} ms |"
            )
        add("")
        add("| path | in flight | RSS before heavy | peak RSS | growth | per in-flight request | ÷ answer size |")
        add("|---|---:|---:|---:|---:|---:|---:|")
        for path, rows in heavy["memory"].items():
            for row in rows:
                add(
                    f"| {path} | {row['in_flight']} | {mib(row['baseline_rss'])} | {mib(row['peak_rss'])} | "
                    f"{mib(row['growth'])} | {mib(row['per_in_flight'])} | {row['ratio']:.2f}x |"
                )
        add("")
        add(
            "Growth is the peak RSS of the phase (VmHWM, and 20 ms samples) minus the RSS before the first heavy "
            "request, divided by the requests in flight (closed loop: that many clients)."
        )
        add("")

    # profiles
    for prof in results.get("profiles", []):
        if "categories" not in prof:
            add(f"py-spy at {prof['rate']:g} req/s: {prof.get('error')}")
            add("")
            continue
        res = prof["result"]
        add(
            f"### Where the gateway's CPU goes: py-spy at {prof['rate']:g} req/s offered "
            f"({res['achieved_rate']:.0f}/s answered, p50 {ms(res['latency_ms']['p50'])} ms, "
            f"{res['proc']['gateway']['cpu_util']:.2f} cores)"
        )
        add("")
        add(
            f"{prof['busy_samples']} busy samples at 250 Hz. py-spy pauses the process for each sample, so these "
            "phases run slower and feed no other figure here."
        )
        add("")
        add("| share of busy samples | where (the innermost of these on the stack) |")
        add("|---:|---|")
        for name, share in prof["categories"]:
            add(f"| {share:.1f}% | {name} |")
        add("")
        add("Top frames by own time: " + "; ".join(f"`{f}` {s:.1f}%" for f, s in prof["top_self"][:10]) + ".")
        add("")
        add(
            "The gateway's own functions, including what they call: "
            + "; ".join(f"`{f}` {s:.0f}%" for f, s in prof["gateway_inclusive"][:12])
            + "."
        )
        add("")

    # targets
    add("### Targets")
    add("")
    add("| target | measured | verdict |")
    add("|---|---|---|")
    for row in results["targets"]:
        add(f"| {row['target']} | {row['measured']} | {row['verdict']} |")
    add("")
    if results.get("obstacles"):
        add("### What stands in the way")
        add("")
        for item in results["obstacles"]:
            add(f"- {item}")
        add("")
    return "\n".join(lines).rstrip() + "\n"


def _verdict(value: float, limit: float, unit: str = " ms", lower_is_better: bool = True) -> str:
    if value is None or math.isnan(value):
        return "not measured"
    if lower_is_better:
        if value < limit:
            return "met"
        return f"missed by {value - limit:.2f}{unit} ({100 * (value / limit - 1):.0f}% over)"
    if value >= limit:
        return "met"
    return f"missed: {value:g} of {limit:g} ({100 * value / limit:.0f}%)"


def assess(results: dict[str, Any]) -> None:
    """The targets table and the data-driven obstacles."""
    meta = results["meta"]
    targets: list[dict[str, str]] = []
    fixed = results["fixed"]
    key = next((k for k in fixed if float(k) == 200.0), None) or next(iter(fixed))
    pooled = fixed[key]["pooled"]
    floor, gw = pooled["floor"]["latency_ms"], pooled["gateway"]["latency_ms"]
    added50, added99 = gw["p50"] - floor["p50"], gw["p99"] - floor["p99"]
    targets.append(
        {
            "target": f"added p50 at {key} req/s, one worker < 0.7 ms",
            "measured": f"{added50:.2f} ms",
            "verdict": _verdict(added50, 0.7),
        }
    )
    targets.append(
        {
            "target": f"added p99 at {key} req/s, one worker < 3 ms",
            "measured": f"{added99:.2f} ms",
            "verdict": _verdict(added99, 3.0),
        }
    )
    steps = results["steps"]
    carried = steps["gateway"]["carried"]
    sat = steps.get("saturation", {}).get("gateway", {})
    measured = f"carried {carried:g} req/s"
    if sat:
        measured += f"; answers at most {sat['achieved_rate']:.0f} req/s at any latency"
    verdict = "met" if carried >= 1000 else f"missed: {carried:g} of 1,000 req/s ({100 * carried / 1000:.0f}%)"
    targets.append(
        {
            "target": f"one worker carries 1,000 req/s with p99 added < {meta['bound_ms']:g} ms",
            "measured": measured,
            "verdict": verdict,
        }
    )
    for k, block in fixed.items():
        p = block["pooled"]
        if "litellm" not in p:
            continue
        f50 = p["floor"]["latency_ms"]["p50"]
        g = p["gateway"]["latency_ms"]["p50"] - f50
        li = p["litellm"]["latency_ms"]["p50"] - f50
        x = li / g if g > 0 else math.inf
        measured = f"gateway {g:.2f} ms, LiteLLM {li:.2f} ms: {x:.1f}x"
        if p["litellm"]["achieved_rate"] < 0.95 * block["rate"]:
            answered = p["litellm"]["achieved_rate"]
            measured += f" (LiteLLM answers only {answered:.0f} req/s here: its added latency is its queue)"
        verdict = "met" if x >= 10 else f"missed: {x:.1f}x of 10x (needs the gateway's added p50 ≤ {li / 10:.2f} ms)"
        targets.append(
            {
                "target": f"≥ 10x lower added latency than LiteLLM at {k} req/s (p50)",
                "measured": measured,
                "verdict": verdict,
            }
        )
    heavy = results.get("heavy")
    if heavy and heavy["memory"].get("gateway"):
        worst = max(heavy["memory"]["gateway"], key=lambda r: r["ratio"])
        targets.append(
            {
                "target": "heavy answers: peak memory per in-flight request < 3x the answer",
                "measured": (
                    f"{worst['ratio']:.2f}x ({mib(worst['per_in_flight'])} per request, {worst['in_flight']} in "
                    f"flight, answer {mib(worst['answer_bytes'])})"
                ),
                "verdict": _verdict(worst["ratio"], 3.0, unit="x"),
            }
        )
    results["targets"] = targets

    obstacles: list[str] = []
    cpu200 = pooled["gateway"]["proc"]["gateway"]["cpu_ms_per_request"]
    emu200 = pooled["floor"]["proc"]["emulator"]["cpu_ms_per_request"]
    cores = results["machine"]["cores"]
    obstacles.append(
        f"CPU: the gateway spends {cpu200:.2f} ms of CPU per request at {key} req/s, so one worker (one core) "
        f"cannot answer more than about {1000 / cpu200:.0f} req/s; 1,000 req/s needs under 1 ms per request, "
        f"before the emulator ({emu200:.2f} ms per request), Redis and the load generator that share the "
        f"machine's {cores} cores with it."
    )
    if added50 > 0.7:
        obstacles.append(
            f"Added latency is mostly that same CPU: at {key} req/s a request spends about {cpu200:.2f} ms of gateway "
            f"CPU on its path (two HTTP exchanges, a Redis round trip, {meta['log_lines_per_request']:.1f} JSON log "
            "lines) against "
            f"{added50:.2f} ms added at p50; the p50 target (0.7 ms) needs it cut by about "
            f"{100 * (1 - 0.7 / added50):.0f}%."
        )
    rates = sorted(fixed, key=float)
    if len(rates) > 1:
        low, high = rates[0], rates[-1]
        cpu_low = fixed[low]["pooled"]["gateway"]["proc"]["gateway"]["cpu_ms_per_request"]
        cpu_high = fixed[high]["pooled"]["gateway"]["proc"]["gateway"]["cpu_ms_per_request"]
        idle = next((r.get("gateway") for r in results.get("cpu_memory", []) if r["label"].startswith("CPU while")), 0)
        low_pooled = fixed[low]["pooled"]
        low_added = low_pooled["gateway"]["latency_ms"]["p50"] - low_pooled["floor"]["latency_ms"]["p50"]
        if cpu_low > 1.3 * cpu_high:
            obstacles.append(
                f"At low rates each request costs more: {cpu_low:.2f} ms of CPU per request at {low} req/s against "
                f"{cpu_high:.2f} ms at {high} req/s, while the idle gateway uses {idle:.1f} ms of CPU per second. That "
                "is no background work: most likely the price of waking an idle process for every request (cold "
                "caches, the virtual machine's idle exits), and it is why the added latency at "
                f"{low} req/s ({low_added:.2f} ms "
                f"at p50) is higher than at {high} req/s."
            )
    for prof in results.get("profiles", []):
        if prof.get("categories"):
            top = ", ".join(f"{name} {share:.0f}%" for name, share in prof["categories"][:5])
            obstacles.append(f"Profile at {prof['rate']:g} req/s offered (share of busy samples): {top}.")
            marks = prof.get("marks", {})
            if marks.get("httpcore_expiry_scan", 0) >= 3:
                obstacles.append(
                    f"At {prof['rate']:g} req/s, {marks['httpcore_expiry_scan']:.0f}% of the gateway's CPU is httpcore "
                    "checking, every time it hands out a connection, whether each pooled upstream connection has "
                    "expired (`has_expired`: anyio's `get_extra_info`, and a poll of the socket in "
                    "`is_socket_readable`): the cost grows with the number of upstream connections, so an overloaded "
                    "gateway slows down further (a known httpcore cost: encode/httpcore#928)."
                )
            if prof["rate"] == min(r["rate"] for r in results["profiles"]) and marks.get("socket_write", 0) >= 10:
                obstacles.append(
                    f"At {prof['rate']:g} req/s, {marks['socket_write']:.0f}% of the samples are inside socket "
                    "writes: on loopback the kernel delivers the data to the receiving socket within the sender's "
                    "system call, so this is the kernel's share of the client exchange, the upstream exchange and "
                    "the Redis round trip. A faster event loop does not remove it; fewer writes per request would "
                    "(h11 and httpcore each write the headers and the body separately)."
                )
            if marks.get("async_bookkeeping", 0) >= 5:
                obstacles.append(
                    f"At {prof['rate']:g} req/s, {marks['async_bookkeeping']:.0f}% of the samples are in anyio, "
                    "sniffio and `asyncio.current_task` themselves: httpcore's anyio backend takes a lock, sets up "
                    "an event or a cancel scope several times per request, and each asks which task and "
                    "which async library is running."
                )
    stack = results["machine"]["gateway_stack"]
    if stack["loop"] != "uvloop" or stack["http"] != "httptools":
        obstacles.append(
            f"The gateway runs on uvicorn's pure-Python defaults here ({stack['loop']} loop, {stack['http']} parser): "
            "the project depends on plain `uvicorn`, not `uvicorn[standard]`, so neither uvloop nor httptools is "
            "installed."
        )
    if meta["others_cores_mean"] > 0.3:
        obstacles.append(
            f"The machine is shared: other processes kept {meta['others_cores_mean']:.2f} cores busy on average "
            "during the measured phases, which inflates every latency here (floor included) and lowers the "
            "highest carried rate."
        )
    if heavy and heavy["memory"].get("gateway"):
        rows = sorted(heavy["memory"]["gateway"], key=lambda r: r["in_flight"])
        worst = max(rows, key=lambda r: r["ratio"])
        if worst["ratio"] >= 3:
            text = (
                f"Heavy answers: {worst['ratio']:.1f}x the answer at {worst['in_flight']} in flight. The adapter reads "
                "the upstream answer into one buffer sized from its Content-Length (adapters/upstream.py), decodes "
                "the JSON (the base64 stays text: a second copy, while the buffer is alive), then the client's "
                "answer is encoded anew (another, while the decoded one is alive); glibc keeps freed large blocks "
                "unless their mapping threshold is fixed (gateway/memory.py does, at startup)."
            )
            if len(rows) > 1:
                first, last = rows[0], rows[-1]
                marginal = (last["growth"] - first["growth"]) / (last["in_flight"] - first["in_flight"])
                text += (
                    f" Each further request in flight adds less ({mib(marginal)}, "
                    f"{marginal / first['answer_bytes']:.1f}x the answer, from {first['in_flight']} to "
                    f"{last['in_flight']} in flight): the single event loop does the copying of one answer at a time."
                )
            obstacles.append(text)
    results["obstacles"] = obstacles


def cpu_memory(results: dict[str, Any], start_rss: dict[str, int], idle: dict[str, float]) -> list[dict[str, Any]]:
    """Rows of the CPU and memory table: label, kind (ms, ms/s, bytes), a value per proxy."""
    phases = results["_phases"]
    sat = results["steps"].get("saturation", {})
    paths = [p for p in ("gateway", "litellm") if p in next(iter(results["fixed"].values()))["pooled"]]
    rows: list[dict[str, Any]] = []

    def row(label: str, kind: str, values: dict[str, float]) -> None:
        rows.append({"label": label, "kind": kind, **{p: values.get(p, math.nan) for p in paths}})

    row("CPU while idle after warm-up (10 ms clock ticks over 5 s: ±2 ms/s)", "ms/s", idle)
    for key, block in results["fixed"].items():
        pooled = block["pooled"]
        row(f"CPU per request at {key} req/s", "ms", {p: pooled[p]["proc"][p]["cpu_ms_per_request"] for p in paths})
    row(
        "CPU per request, closed loop at saturation",
        "ms",
        {p: sat[p]["proc"][p]["cpu_ms_per_request"] for p in paths if p in sat},
    )
    row("RSS after start and warm-up", "bytes", {p: start_rss.get(p, math.nan) for p in paths})
    for label, heavy in (("peak RSS, light phases", False), ("peak RSS, heavy phases", True)):
        peaks = {}
        for path in paths:
            values = [ph["proc"][path]["rss_peak"] for ph in phases if ph["path"] == path and ph["heavy"] == heavy]
            peaks[path] = max(values) if values else math.nan
        row(label, "bytes", peaks)
    return rows


def log_lines_per_request(stack: Stack, phases: list[dict[str, Any]]) -> float:
    """Lines the gateway logged per request it served (its log is a file of this run)."""
    served = sum(p["sent"] + p["spec"]["warmup_requests"] for p in phases if p["path"] == "gateway")
    lines = _read(str(stack.services["gateway"].log_path)).count("\n")
    return lines / served if served else math.nan


def measure_idle(stack: Stack, paths: list[str], seconds: float) -> dict[str, float]:
    """CPU milliseconds per second each proxy uses with no traffic at all."""
    from bench.loadgen import process_tree, snapshot

    trees = {p: process_tree(stack.services[p].pid) for p in paths}
    before = {p: snapshot(t).cpu_s for p, t in trees.items()}
    time.sleep(seconds)
    return {p: (snapshot(t).cpu_s - before[p]) * 1000 / seconds for p, t in trees.items()}


def loadgen_health(results: dict[str, Any]) -> dict[str, float]:
    """The load generator's own cost and lateness in its busiest measured phases."""
    phases = [p for p in results["_phases"] if p["spec"]["mode"] == "open" and not p["heavy"]]
    top = max(p["spec"]["rate"] for p in phases)
    busiest = [p for p in phases if p["spec"]["rate"] == top]
    sat = results["steps"].get("saturation", {}).get("floor")
    return {
        "rate": top,
        "cpu_ms_per_request": sum(p["loadgen_cpu_s"] for p in busiest) * 1000 / max(1, sum(p["sent"] for p in busiest)),
        "lag_p99_ms": max(p["lag_ms"]["p99"] for p in busiest),
        "floor_max": sat["achieved_rate"] if sat else math.nan,
    }


def write_docs(path: Path, block: str) -> None:
    """Replace the proxy block of the docs (or add it), leaving the rest of the file alone."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"{START}\n{block.rstrip()}\n{END}"
    if START in text and END in text and text.index(START) < text.index(END):
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        text = head + section + tail
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# --------------------------------------------------------------------------- main


def resolve_litellm(args: argparse.Namespace) -> None:
    """Find LiteLLM's python (a relative path is also tried from the repository root), or stop here."""
    if args.no_litellm:
        return
    given = Path(args.litellm_python)
    candidates = [given] if given.is_absolute() else [given, ROOT / given]
    found = next((c for c in candidates if c.is_file()), None)
    which = shutil.which(args.litellm_python) if found is None else None
    if found is None and which is None:
        raise SystemExit(
            f"bench: no LiteLLM python at {args.litellm_python!r}. LiteLLM lives in its own virtualenv (it pins "
            "other versions than the gateway's): `python3 -m venv bench/.venv-litellm && "
            "bench/.venv-litellm/bin/pip install 'litellm[proxy]'` (what `make bench` does), or pass "
            "--litellm-python PATH, or --no-litellm to measure without it."
        )
    python = str(found.absolute()) if found is not None else str(which)
    check = subprocess.run(
        [python, "-c", "import litellm.proxy.proxy_cli"], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        raise SystemExit(
            f"bench: {python} cannot import LiteLLM's proxy (install 'litellm[proxy]' into that virtualenv):\n"
            + check.stderr[-1500:]
        )
    args.litellm_python = python


def check_redis(url: str) -> None:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        client.ping()
        client.close()
    except Exception as exc:
        raise SystemExit(f"bench: Redis at {url} is not reachable ({exc}); start one or pass --redis-url") from exc


@contextlib.contextmanager
def running_stack(args: argparse.Namespace) -> Iterator[Stack]:
    workdir = Path(tempfile.mkdtemp(prefix="igw-bench-"))
    stack = Stack(args, workdir)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        if args.keep_logs:
            log(f"servers' logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check_redis(args.redis_url)
    resolve_litellm(args)
    started = time.monotonic()
    machine = machine_info()
    log(f"machine: {machine['cpu_model']}, {machine['cores']} cores, load {machine['loadavg_start'][0]:.2f}")
    with running_stack(args) as stack:
        meta: dict[str, Any] = {
            "command": "python -m bench.proxy" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
            "duration": args.duration,
            "rounds": args.rounds,
            "bound_ms": args.bound_ms,
            "emulator_delay_ms": args.emulator_delay_ms,
            "heavy_rate": args.heavy_rate,
            "saturation_connections": args.saturation_connections,
            "litellm_missing": stack.litellm_missing,
            "quick": args.quick,
        }
        if stack.litellm_python:
            meta["litellm_version"] = litellm_version(stack.litellm_python)
            meta["litellm_stack"] = litellm_stack(stack.litellm_python)
        log("servers up: " + ", ".join(f"{n} {s.base_url} (pid {s.pid})" for n, s in stack.services.items()))
        bench = Bench(args, stack)
        # warm every path up (lazy imports, connection pools, caches) before measuring anything
        for path in bench.paths:
            bench.run(path, "warm-up", rate=100.0, duration=1.0, keep_latencies=False)
        start_rss = {p: _rss_tree(stack.services[p].pid) for p in bench.paths if p != "floor"}
        idle_cpu = measure_idle(stack, [p for p in bench.paths if p != "floor"], 1.0 if args.quick else 5.0)
        results: dict[str, Any] = {"meta": meta, "machine": machine}
        results["fixed"] = bench.fixed_rates()
        results["steps"] = bench.steps()
        results["heavy"] = bench.heavy()
        if args.py_spy:
            results["profiles"] = bench.profiles()
        results["_phases"] = bench.phases
        meta["log_lines_per_request"] = log_lines_per_request(stack, bench.phases)
        results["cpu_memory"] = cpu_memory(results, start_rss, idle_cpu)
        results["loadgen"] = loadgen_health(results)
    measured = [p for p in bench.phases if p["label"] != "warm-up" and not p["label"].startswith("py-spy")]
    own = {"floor": ("emulator",), "gateway": ("gateway", "emulator"), "litellm": ("litellm", "emulator")}
    busy = [p["system"]["busy_cores"] for p in measured]
    others = [
        p["system"]["busy_cores"]
        - sum(p["proc"][n]["cpu_util"] for n in own[p["path"]] if n in p["proc"])
        - p["loadgen_cpu_s"] / p["window_s"]
        for p in measured
    ]
    meta["busy_cores_mean"] = sum(busy) / len(busy) if busy else math.nan
    meta["others_cores_mean"] = max(0.0, sum(others) / len(others)) if others else math.nan
    meta["elapsed_s"] = time.monotonic() - started
    assess(results)
    block = render(results)
    print(block)
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps(
                {k: v for k, v in results.items() if k != "_phases"} | {"phases": [compact(p) for p in bench.phases]},
                indent=1,
                default=str,
            )
        )
        log(f"results as JSON in {args.json_out}")
    if not args.no_docs:
        write_docs(Path(args.docs), block)
        log(f"results written into {args.docs}")
    log(f"done in {meta['elapsed_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
