"""The parts of the soak's topology: each a real process started from the project's own files, and stopped.

``Topology.start()`` brings up, in order: Redis (AOF, noeviction), SeaweedFS (tests/seaweedfs.py), the
provider emulators (``python -m tests.emulators all``), two GPU workers (``image-gateway-worker`` with
deploy/config/worker.yaml on the CPU with the tiny model), the bucket's lifecycle rule
(``image-gateway store-setup``), three gateway replicas (``image-gateway serve`` with
deploy/config/gateway.yaml), HAProxy in front of them, and Prometheus with the soak's rules.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from soak import configs
from soak.ports import consecutive_ports, free_ports

STARTUP_TIMEOUT_S = 180.0  # a worker builds the tiny model and imports torch on a busy 2-core machine
REPLICAS = 3
WORKERS = 2


class MissingTool(RuntimeError):
    """A binary the soak needs is not installed; the message says how to install it."""


def require(binary: str, install: str) -> str:
    """The path of ``binary`` (beside this Python first: the virtualenv's console scripts), else a clear error."""
    beside = Path(sysconfig.get_path("scripts")) / binary
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(binary) or (f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None)
    if found is None:
        raise MissingTool(f"the soak needs `{binary}`: {install}")
    return found


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


@dataclass
class Part:
    """One process of the topology: how to start it, where it logs, its memory over time."""

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    ready: Callable[[], bool] | None = None
    process: subprocess.Popen[bytes] | None = None
    peak_rss: int = 0
    final_rss: int = 0
    restarts: int = 0

    def start(self, timeout: float = STARTUP_TIMEOUT_S, wait: bool = True) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
                start_new_session=True,  # a signal to the soak (Ctrl-C) is not a signal to the parts
            )
        if wait and self.ready is not None:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        assert self.ready is not None and self.process is not None
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.process.poll() is not None:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.name} exited at start (status {self.process.returncode}):\n{tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} was not ready in {timeout:g} s; log: {self.log}")
            time.sleep(0.2)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL, and wait for it to be gone."""
        self.signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait()

    def restart(self) -> None:
        self.restarts += 1
        self.start()

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM (SIGCONT first, should it be paused), then SIGKILL past ``grace``."""
        if not self.alive():
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        assert self.process is not None
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.kill()

    def sample_memory(self) -> None:
        if self.alive():
            self.final_rss = rss_bytes(self.pid)
            self.peak_rss = max(self.peak_rss, self.final_rss)


def http_ok(url: str, headers: dict[str, str] | None = None) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, headers=headers, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    return check


def port_open(port: int) -> Callable[[], bool]:
    def check() -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", port)) == 0

    return check


def redis_ready(port: int) -> Callable[[], bool]:
    """Up once it answers PING and has loaded its AOF (a loading Redis answers -LOADING)."""

    def check() -> bool:
        import redis

        try:
            return bool(redis.Redis(port=port, socket_connect_timeout=0.5, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    return check


class Topology:
    """Every part of the soak, with their addresses; ``start()`` brings them up, ``stop()`` takes them down."""

    def __init__(self, workdir: Path, rules: Path, *, scrape_interval_s: float) -> None:
        self.dir = workdir
        self.rules = rules
        self.scrape_interval_s = scrape_interval_s
        self.python = sys.executable
        self.binaries = {
            "redis-server": require("redis-server", "apt-get install redis-server"),
            "haproxy": require("haproxy", "apt-get install haproxy (`make soak` does it when run as root)"),
            "prometheus": require("prometheus", "apt-get install prometheus (`make soak` does it when run as root)"),
            "image-gateway": require("image-gateway", "make install"),
            "image-gateway-worker": require("image-gateway-worker", "make install"),
        }
        from tests.seaweedfs import weed_binary

        weed_binary()  # a clear error now, before anything starts, when `weed` is missing
        ports = free_ports(4 + REPLICAS + WORKERS + 5)
        self.redis_port, self.lb_port, self.prometheus_port, self.emulator_base = ports[:4]
        # The emulators want consecutive ports: take them above the ephemeral range's usual start.
        self.emulator_base = consecutive_ports(5)
        self.replica_ports = ports[4 : 4 + REPLICAS]
        self.worker_ports = ports[4 + REPLICAS : 4 + REPLICAS + WORKERS]
        self.secrets = configs.Secrets.new()
        self.parts: list[Part] = []
        self.seaweedfs: object | None = None
        self.env: dict[str, str] = {}

    @property
    def lb_url(self) -> str:
        return f"http://127.0.0.1:{self.lb_port}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def emulator_url(self, kind: str) -> str:
        return f"http://127.0.0.1:{self.emulator_base + configs.EMULATOR_ORDER.index(kind)}"

    def part(self, name: str) -> Part:
        return next(p for p in self.parts if p.name == name)

    @property
    def replicas(self) -> list[Part]:
        return [p for p in self.parts if p.name.startswith("gateway-")]

    @property
    def workers(self) -> list[Part]:
        return [p for p in self.parts if p.name.startswith("worker-")]

    def _add(self, part: Part, wait: bool = True) -> Part:
        self.parts.append(part)
        part.start(wait=wait)
        return part

    def start(self, say: Callable[[str], None]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        say(f"redis-server on :{self.redis_port} (appendonly yes, noeviction)")
        redis_dir = self.dir / "redis"
        redis_dir.mkdir(exist_ok=True)
        self._add(Part(
            "redis",
            [self.binaries["redis-server"], "--port", str(self.redis_port), "--bind", "127.0.0.1",
             "--dir", str(redis_dir), "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
             "--maxmemory", "1gb", "--maxmemory-policy", "noeviction"],
            self.dir / "redis.log",
            ready=redis_ready(self.redis_port),
        ))  # fmt: skip

        say("SeaweedFS (weed server -s3)")
        self._start_seaweedfs()

        say(f"provider emulators on :{self.emulator_base}..{self.emulator_base + 4}")
        self._add(Part(
            "emulators",
            [self.python, "-m", "tests.emulators", "all", "--base-port", str(self.emulator_base), "--no-call-log"],
            self.dir / "emulators.log",
            ready=http_ok(self.emulator_url("nebulablock") + "/_emulator/health"),
        ))  # fmt: skip

        self.env = configs.environment(self)
        configs.check_environment(self.env)
        worker_config = configs.write_worker_config(self.dir)
        # Where built-in tiny models are built (the project's default, kept between runs and shared with the suite).
        model_dir = Path(os.environ.get("IMAGE_GATEWAY_MODEL_DIR", "var/models")).resolve()
        built = (model_dir / "tiny-sdxl" / "model_index.json").is_file()
        for index, port in enumerate(self.worker_ports, 1):
            say(f"worker-{index} (image-gateway-worker, tiny model on the CPU) on :{port}")
            part = Part(
                f"worker-{index}",
                [self.binaries["image-gateway-worker"], "--config", str(worker_config), "--port", str(port)],
                self.dir / f"worker-{index}.log",
                # One torch thread each: the two workers share this machine's cores with everything else.
                env={**self.env, "IMAGE_GATEWAY_MODEL_DIR": str(model_dir), "OMP_NUM_THREADS": "1"},
                ready=http_ok(f"http://127.0.0.1:{port}/health"),
            )
            # The first run builds the tiny model: the first worker alone; later runs start them together.
            self._add(part, wait=not built and index == 1)

        gateway_config = configs.write_gateway_config(self)
        if not self.s3_endpoint:
            raise RuntimeError("SeaweedFS has no endpoint")
        say("image-gateway store-setup (the bucket's lifecycle rule)")
        setup = subprocess.run(
            [self.binaries["image-gateway"], "store-setup", "--config", str(gateway_config)],
            env={**os.environ, **self.env}, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if setup.returncode != 0:
            raise RuntimeError(f"image-gateway store-setup failed: {setup.stdout}{setup.stderr}")

        for index, port in enumerate(self.replica_ports, 1):
            say(f"gateway-{index} (image-gateway serve) on :{port}")
            self._add(Part(
                f"gateway-{index}",
                [self.binaries["image-gateway"], "serve", "--config", str(gateway_config), "--port", str(port)],
                self.dir / f"gateway-{index}.log",
                env=self.env,
                ready=http_ok(f"http://127.0.0.1:{port}/ready"),
            ), wait=False)  # fmt: skip
        for part in [*self.workers, *self.replicas]:
            part.wait_ready()

        say(f"HAProxy on :{self.lb_port} in front of the {REPLICAS} replicas")
        haproxy_config = configs.write_haproxy_config(self)
        self._add(Part(
            "haproxy",
            [self.binaries["haproxy"], "-db", "-f", str(haproxy_config)],
            self.dir / "haproxy.log",
            ready=http_ok(self.lb_url + "/ready"),
        ))  # fmt: skip

        say(f"Prometheus on :{self.prometheus_port} (rules: {self.rules.name})")
        prometheus_config = configs.write_prometheus_config(self)
        self._add(Part(
            "prometheus",
            [self.binaries["prometheus"], f"--config.file={prometheus_config}",
             f"--storage.tsdb.path={self.dir / 'prometheus'}",
             f"--web.listen-address=127.0.0.1:{self.prometheus_port}"],
            self.dir / "prometheus.log",
            ready=http_ok(self.prometheus_url + "/-/ready"),
        ))  # fmt: skip

    def _start_seaweedfs(self) -> None:
        from tests.seaweedfs import SeaweedFS

        server = SeaweedFS(self.dir / "seaweedfs").start()
        server.create_bucket(configs.BUCKET)
        self.seaweedfs = server
        assert server.process is not None
        part = Part("seaweedfs", [], server.log, process=server.process)
        self.parts.append(part)

    @property
    def s3_endpoint(self) -> str:
        return str(getattr(self.seaweedfs, "endpoint", ""))

    def stop(self) -> None:
        """Every part, the load balancer first and the stores last."""
        order: Sequence[str] = ("prometheus", "haproxy")
        for name in order:
            with contextlib.suppress(StopIteration):
                self.part(name).stop()
        for part in [*self.replicas, *self.workers]:
            part.stop(grace=40)
        for name in ("emulators", "redis"):
            with contextlib.suppress(StopIteration):
                self.part(name).stop()
        if self.seaweedfs is not None:
            self.seaweedfs.stop()  # type: ignore[attr-defined]

    def sample_memory(self) -> None:
        for part in self.parts:
            part.sample_memory()
