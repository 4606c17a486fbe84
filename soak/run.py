"""One soak run: start the topology, send traffic while the faults run, drain, measure, stop everything."""

from __future__ import annotations

import asyncio
import datetime
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from soak import configs
from soak.faults import Schedule
from soak.report import Measured
from soak.rules import write_soak_rules
from soak.topology import Topology
from soak.traffic import BUDGET_CALLS, CALLS, LIMITED_CALL, Traffic, client_loop, follow_jobs
from soak.webhooks import Receiver

CLIENTS = 6  # concurrent clients of the mixed traffic (the budget and limited keys have one each)
DRAIN_S = 90.0  # after the traffic: jobs to end, webhooks to be told, alerts to resolve


@dataclass
class Options:
    duration_s: float
    workdir: Path
    out: Path
    clients: int = CLIENTS
    log: Any = field(default=print)


def timings(duration_s: float) -> tuple[int, int, float]:
    """The soak rules' ``for`` and window, and the scrape interval, for a run this long."""
    for_s = int(min(15, max(3, duration_s / 60)))
    window_s = int(min(60, max(15, duration_s / 10)))
    return for_s, window_s, 1.0


def run(options: Options) -> Measured:
    say = options.log
    for_s, window_s, scrape_s = timings(options.duration_s)
    options.workdir.mkdir(parents=True, exist_ok=True)
    rules = write_soak_rules(options.workdir / "alerts.soak.yml", for_s, window_s)
    topology = Topology(options.workdir, rules, scrape_interval_s=scrape_s)
    receiver = Receiver(topology.secrets.webhook_secret)
    sampling = threading.Event()
    try:
        topology.start(say)
        sampler = threading.Thread(target=_sample, args=(topology, sampling), daemon=True)
        sampler.start()
        t0 = time.monotonic()
        wall0 = time.time()
        schedule = Schedule(topology, options.duration_s, for_s, t0).build()
        schedule.start()
        say(f"traffic for {options.duration_s:g} s through {topology.lb_url}; faults on schedule")
        traffic = Traffic(topology.lb_url, topology.secrets.keys, receiver.url, t0)
        mid_rss: dict[str, int] = {}
        asyncio.run(_drive(traffic, options, topology, mid_rss))
        schedule.join(timeout=120)
        say("draining: jobs to their end, webhooks, alerts to resolve")
        alerts_end = _wait_alerts_resolved(topology, window_s + for_s + 30)
        sampling.set()
        topology.sample_memory()
        return Measured(
            duration_s=options.duration_s,
            for_s=for_s,
            window_s=window_s,
            traffic=traffic,
            faults=schedule.faults,
            receiver=receiver,
            parts=topology.parts,
            mid_rss=mid_rss,
            budget=_budget_spent(topology),
            fired=_fired(topology, wall0),
            still_firing=alerts_end,
            workdir=options.workdir,
        )
    finally:
        sampling.set()
        say("stopping every part")
        topology.stop()
        receiver.stop()


async def _drive(traffic: Traffic, options: Options, topology: Topology, mid_rss: dict[str, int]) -> None:
    limits = httpx.Limits(max_connections=options.clients + 8)
    timeout = httpx.Timeout(180, connect=5)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as http:
        done = asyncio.Event()
        tasks = [asyncio.create_task(client_loop(traffic, http, CALLS, 0.0)) for _ in range(options.clients)]
        tasks.append(asyncio.create_task(client_loop(traffic, http, BUDGET_CALLS, 0.5)))
        tasks.append(asyncio.create_task(client_loop(traffic, http, [LIMITED_CALL], 0.1)))
        follower = asyncio.create_task(follow_jobs(traffic, http, done))
        await asyncio.sleep(options.duration_s / 2)
        mid_rss.update({part.name: part.final_rss for part in topology.parts})
        await asyncio.sleep(options.duration_s / 2)
        traffic.stop.set()
        await asyncio.gather(*tasks)
        done.set()
        try:
            await asyncio.wait_for(follower, DRAIN_S)
        except TimeoutError:
            for job in traffic.jobs.values():
                if job.ended_at is None and not job.lost:
                    job.lost = f"not ended {DRAIN_S:g} s after the traffic stopped (last seen {job.status})"


def _sample(topology: Topology, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        topology.sample_memory()


def _prometheus(topology: Topology, path: str, **params: Any) -> Any:
    answer = httpx.get(topology.prometheus_url + path, params=params, timeout=10)
    answer.raise_for_status()
    return answer.json()["data"]


def _wait_alerts_resolved(topology: Topology, limit_s: float) -> list[str]:
    """Wait (at most ``limit_s``) until no alert fires; the ones still firing then."""
    deadline = time.monotonic() + limit_s
    while True:
        alerts = _prometheus(topology, "/api/v1/alerts")["alerts"]
        firing = sorted({a["labels"]["alertname"] for a in alerts if a["state"] == "firing"})
        if not firing or time.monotonic() > deadline:
            return firing
        time.sleep(2)


def _fired(topology: Topology, since: float) -> dict[str, list[str]]:
    """Every alert that fired during the run (ALERTS series over the run), with the labels it fired for."""
    data = _prometheus(
        topology, "/api/v1/query_range", query='ALERTS{alertstate="firing"}', start=since, end=time.time(), step=1
    )
    fired: dict[str, list[str]] = {}
    for series in data["result"]:
        labels = series["metric"]
        name = labels.pop("alertname")
        for drop in ("alertstate", "severity", "__name__"):
            labels.pop(drop, None)
        fired.setdefault(name, []).append(",".join(f"{k}={v}" for k, v in sorted(labels.items())))
    return fired


def _budget_spent(topology: Topology) -> int:
    """The budgeted key's counter for today, in millionths of a USD (what Redis holds as spent)."""
    day = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    client = redis.Redis(port=topology.redis_port)
    value = client.get(f"igw:budget:budget:{day}")
    return int(value or 0) if configs.BUDGET_USD else 0
