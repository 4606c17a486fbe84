"""The servers a benchmark run starts: provider emulators, the gateway, LiteLLM's proxy.

Each runs in its own process group (stopped as a whole) with its log in the run's work
directory. The emulators are `python -m tests.emulators`, as `make emulators` starts them:
a process boundary, not an import, so bench/ depends on the test package's command line
only, the one `make emulators` and the README already rely on (moving the emulators to a
package of their own would touch every test that imports them, for no gain here).
"""

from __future__ import annotations

import contextlib
import json
import os
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

__all__ = [
    "EMULATOR_KEY",
    "HEAVY_MODEL",
    "MODEL",
    "ROOT",
    "Service",
    "Stack",
    "StackOptions",
    "check_redis",
    "free_port",
    "litellm_stack",
    "litellm_version",
    "log",
    "read_text",
    "resolve_litellm",
    "running_stack",
    "start_service",
]

ROOT = Path(__file__).resolve().parents[1]
EMULATOR_COMMAND = ("-m", "tests.emulators", "melious")  # what `make emulators` runs, one provider
EMULATOR_KEY = "test-key"
MODEL = "flux-schnell"
HEAVY_MODEL = "flux-schnell-noise"  # the gateway's and LiteLLM's name for the noise emulator's flux-schnell


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def read_text(path: str | Path) -> str:
    """A file's text, or "" when it cannot be read (/proc files, logs of a server gone)."""
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_json(method: str, url: str, payload: Any = None) -> Any:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


# --------------------------------------------------------------------------- one server


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
            if self._answers(path):
                return
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready within {timeout:g}s; its log:\n{self.tail()}")

    def _answers(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def tail(self, lines: int = 30) -> str:
        return "\n".join(read_text(self.log_path).splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self._signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.process.wait(5)

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)


def start_service(
    name: str,
    command: list[str],
    base_url: str,
    workdir: Path,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
) -> Service:
    """``command`` started in ``cwd`` (default: this checkout), its output in ``workdir``/``name``.log."""
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=cwd or ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # its own process group: stopped as a whole
        )
    return Service(name, process, base_url, log_path)


# --------------------------------------------------------------------------- the stack


class StackOptions(msgspec.Struct, frozen=True, kw_only=True):
    """What the servers of a run are started with."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    emulator_delay_ms: float = 1.0
    upstream_transport: str = "aiohttp"  # the gateway's default (server.upstream_transport)
    litellm_python: str | None = None  # None: no LiteLLM in this run
    keep_logs: bool = False


@dataclass
class Stack:
    """The emulators, the gateway and (when asked) LiteLLM's proxy, started for one run."""

    options: StackOptions
    workdir: Path
    services: dict[str, Service] = field(default_factory=dict)
    gateway_key: str = field(default_factory=lambda: "igw-bench-" + secrets.token_hex(8))
    litellm_key: str = field(default_factory=lambda: "sk-bench-" + secrets.token_hex(8))
    redis_prefix: str = field(default_factory=lambda: f"igw-bench-{secrets.token_hex(4)}:")

    def start(self) -> None:
        self._emulator("emulator", noise=False)
        self._emulator("emulator_noise", noise=True)
        self._gateway()
        if self.options.litellm_python:
            self._litellm(self.options.litellm_python)

    def add(self, service: Service, ready_path: str, timeout: float) -> Service:
        """Keep ``service`` with the others (stopped with them), once it answers ``ready_path``."""
        self.services[service.name] = service
        service.wait_ready(ready_path, timeout)
        return service

    def _start(self, name: str, command: list[str], env: dict[str, str] | None = None, port: int = 0) -> Service:
        return start_service(name, command, f"http://127.0.0.1:{port}", self.workdir, env)

    def _emulator(self, name: str, noise: bool) -> None:
        port = free_port()
        command = [sys.executable, *EMULATOR_COMMAND, "--port", str(port), "--no-call-log"]
        if noise:
            command.append("--noise")
        service = self.add(self._start(name, command, port=port), "/_emulator/health", 30)
        delay = self.options.emulator_delay_ms / 1000.0
        http_json("POST", service.base_url + "/_emulator/faults", {"delay": delay, "times": None})

    def _gateway(self) -> None:
        port = free_port()
        path = self.workdir / "gateway.json"  # JSON is YAML
        path.write_text(json.dumps(self.gateway_config(port), indent=2))
        command = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(path), "--port", str(port)]
        self.add(self._start("gateway", command, port=port), "/ready", 60)

    def gateway_config(self, port: int) -> dict[str, Any]:
        """The gateway's config: one inbound key with a (never reached) limit, both emulators as providers."""
        from gateway.admission.auth import hash_key

        limits = {"requests": 1_000_000_000, "images": 4_000_000_000, "period_s": 60}
        return {
            "server": {
                "host": "127.0.0.1",
                "port": port,
                "log_level": "info",
                "shutdown_grace_s": 2,
                "upstream_transport": self.options.upstream_transport,
            },
            "redis": {"url": self.options.redis_url, "key_prefix": self.redis_prefix},
            "auth": {"keys": [{"name": "bench", "hash": hash_key(self.gateway_key), "limits": limits}]},
            "image_store": {"path": str(self.workdir / "images")},
            "providers": {
                "melious": self._provider("emulator"),
                "melious-noise": self._provider("emulator_noise"),
            },
            "models": [
                {"name": MODEL, "targets": [{"provider": "melious", "model": MODEL}]},
                {"name": HEAVY_MODEL, "targets": [{"provider": "melious-noise", "model": MODEL}]},
            ],
        }

    def _provider(self, emulator: str) -> dict[str, str]:
        return {"kind": "melious", "base_url": self.services[emulator].base_url, "api_key": EMULATOR_KEY}

    def _litellm(self, python: str) -> None:
        port = free_port()
        path = self.workdir / "litellm.json"
        path.write_text(json.dumps(self.litellm_config(), indent=2))
        script = Path(python).parent / "litellm"
        launcher = [str(script)] if script.is_file() else [python, "-m", "litellm.proxy.proxy_cli"]
        command = [*launcher, "--config", str(path), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
        env = {
            "LITELLM_LOG": "ERROR",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the cost map at start
            "LITELLM_TELEMETRY": "False",
            "DISABLE_ADMIN_UI": "True",
        }
        self.add(self._start("litellm", command, env, port=port), "/health/liveliness", 120)

    def litellm_config(self) -> dict[str, Any]:
        """LiteLLM's proxy config: the same two models on the same emulators, no callbacks, no database."""
        return {
            "model_list": [self._litellm_model(MODEL, "emulator"), self._litellm_model(HEAVY_MODEL, "emulator_noise")],
            "litellm_settings": {
                "telemetry": False,
                "success_callback": [],
                "failure_callback": [],
                "callbacks": [],
                "cache": False,
            },
            "general_settings": {"master_key": self.litellm_key, "disable_spend_logs": True},
        }

    def _litellm_model(self, name: str, emulator: str) -> dict[str, Any]:
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

    def stop(self) -> None:
        for service in reversed(list(self.services.values())):
            service.stop()
        self._clean_redis()

    def _clean_redis(self) -> None:
        try:
            import redis

            client = redis.Redis.from_url(self.options.redis_url, socket_timeout=2)
            keys = list(client.scan_iter(match=self.redis_prefix + "*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()
        except Exception as exc:  # cleaning is best effort
            log(f"could not clean the Redis keys {self.redis_prefix}*: {exc}")


@contextlib.contextmanager
def running_stack(options: StackOptions) -> Iterator[Stack]:
    """The stack, started in a fresh work directory, stopped (and its logs removed unless kept) on exit."""
    workdir = Path(tempfile.mkdtemp(prefix="igw-bench-"))
    stack = Stack(options, workdir)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        if options.keep_logs:
            log(f"servers' logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------- what must be there


def check_redis(url: str) -> None:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        client.ping()
        client.close()
    except Exception as exc:
        raise SystemExit(f"bench: Redis at {url} is not reachable ({exc}); start one or pass --redis-url") from exc


def resolve_litellm(given: str) -> str:
    """LiteLLM's python (a relative path is also tried from the repository root), or stop here."""
    path = Path(given)
    candidates = [path] if path.is_absolute() else [path, ROOT / path]
    found = next((c for c in candidates if c.is_file()), None)
    which = shutil.which(given) if found is None else None
    if found is None and which is None:
        raise SystemExit(
            f"bench: no LiteLLM python at {given!r}. LiteLLM lives in its own virtualenv (it pins "
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
    return python


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
    """uvicorn's version, event loop and HTTP parser in LiteLLM's virtualenv."""
    code = (
        "import importlib.util as u, importlib.metadata as m;"
        "print(m.version('uvicorn'), 'uvloop' if u.find_spec('uvloop') else 'asyncio',"
        " 'httptools' if u.find_spec('httptools') else 'h11')"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    parts = out.stdout.split()
    return dict(zip(("uvicorn", "loop", "http"), parts, strict=False)) if len(parts) == 3 else {}
