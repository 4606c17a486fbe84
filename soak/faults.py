"""The soak's faults, on a schedule scaled to the run's length, and the alerts each is expected to raise.

Each fault starts at a fraction of the run and lasts long enough for the (shortened) rules to see it;
the last quarter of the run is quiet so that every alert can resolve. The schedule runs in its own
thread: killing and restarting a process blocks, the traffic goes on meanwhile.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from soak.topology import Topology

# alert name -> the fault that should raise it (every one must fire, and resolve by the end).
EXPECTED = {
    "ImageGatewayDown": "replica SIGKILLed",
    "ImageGatewayWorkerDown": "worker SIGKILLed",
    "ImageGatewayRedisDown": "Redis restarted",
    "ImageGatewayProviderCoolingDown": "provider outage (nebul)",
    "ImageGatewayServerErrors": "provider outage (nebul; kontext has no fallback)",
    "ImageGatewayRateLimitRefusals": "the `limited` key driven past its limit the whole run",
}


@dataclass
class Fault:
    """One fault: when it begins (seconds into the run), how long it lasts, and what it does."""

    name: str
    at_s: float
    hold_s: float
    begin: Callable[[], None]
    end: Callable[[], None]
    began: float | None = None
    ended: float | None = None
    error: str = ""


@dataclass
class Schedule:
    topology: Topology
    duration_s: float
    alert_for_s: float
    t0: float
    faults: list[Fault] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def build(self) -> Schedule:
        top = self.topology
        replica, worker, redis = top.replicas[1], top.workers[1], top.part("redis")
        seaweedfs = top.part("seaweedfs")
        # A fault is held long enough for its alert's `for:` plus two scrapes and an evaluation.
        hold = max(8.0, self.alert_for_s + 4 * top.scrape_interval_s)
        d = self.duration_s
        self.faults = [
            Fault("replica gateway-2 SIGKILLed, restarted", 0.06 * d, hold, replica.kill, replica.restart),
            Fault("worker-2 SIGKILLed, restarted", 0.18 * d, hold, worker.kill, worker.restart),
            Fault("Redis restarted (SIGTERM, AOF reloaded)", 0.30 * d, hold,
                  lambda: redis.stop(grace=20), redis.restart),
            Fault("SeaweedFS paused (SIGSTOP/SIGCONT)", 0.42 * d, 5.0,
                  lambda: seaweedfs.signal(signal.SIGSTOP), lambda: seaweedfs.signal(signal.SIGCONT)),
            Fault("provider outage: nebul answers 503", 0.52 * d, hold,
                  lambda: _emulator_fault(top.emulator_url("nebul"), {"status": 503, "times": None}),
                  lambda: _emulator_clear(top.emulator_url("nebul"))),
            Fault("slow provider: melious answers after 3 s", 0.62 * d, hold,
                  lambda: _emulator_fault(top.emulator_url("melious"), {"delay": 3, "times": None}),
                  lambda: _emulator_clear(top.emulator_url("melious"))),
        ]  # fmt: skip
        return self

    def start(self) -> None:
        """Each fault in its own thread: a restart that takes a minute (a worker imports torch) delays no other."""
        self.threads = [threading.Thread(target=self._run, args=(fault,), daemon=True) for fault in self.faults]
        for thread in self.threads:
            thread.start()

    def _run(self, fault: Fault) -> None:
        wait = fault.at_s - (time.monotonic() - self.t0)
        if wait > 0:
            time.sleep(wait)
        fault.began = time.monotonic() - self.t0
        try:
            fault.begin()
            time.sleep(fault.hold_s)
            fault.end()
        except Exception as exc:  # reported in the summary: a fault that could not be undone is a finding
            fault.error = f"{type(exc).__name__}: {exc}"
        fault.ended = time.monotonic() - self.t0

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def _emulator_fault(base_url: str, fault: dict[str, object]) -> None:
    httpx.post(base_url + "/_emulator/faults", json=fault, timeout=5).raise_for_status()


def _emulator_clear(base_url: str) -> None:
    httpx.delete(base_url + "/_emulator/faults", timeout=5).raise_for_status()
