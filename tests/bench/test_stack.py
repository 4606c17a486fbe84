"""The stack a benchmark starts, for real: the emulators as `python -m tests.emulators`
processes, the gateway as its own process on real Redis, and one short measured rate through
it against the floor. Everything is stopped, and the run's Redis keys removed, on exit."""

from __future__ import annotations

from pathlib import Path

import redis

from bench.measure import rss_tree
from bench.phases import Plan, ProxyBench
from bench.stack import StackOptions, running_stack
from gateway.config import parse_config
from tests.redis_support import require_shared_redis


def test_a_short_fixed_rate_through_the_gateway_against_the_floor() -> None:
    url = require_shared_redis()
    with running_stack(StackOptions(redis_url=url)) as stack:
        services = dict(stack.services)
        assert list(services) == ["emulator", "emulator_noise", "gateway"]  # no LiteLLM unless asked
        cmdline = Path(f"/proc/{services['emulator'].pid}/cmdline").read_bytes().split(b"\0")
        assert b"tests.emulators" in cmdline and b"--no-call-log" in cmdline  # a process, not an import
        config = parse_config((stack.workdir / "gateway.json").read_text())
        assert [m.name for m in config.models] == ["flux-schnell", "flux-schnell-noise"]
        bench = ProxyBench(stack, plan=Plan(duration=1.0, rounds=1, rates=(50.0,)))
        block = bench.fixed_rate(50.0)
        assert rss_tree(services["gateway"].pid) > 0
        prefix = stack.redis_prefix
    assert set(block.pooled) == {"floor", "gateway"}
    for path, pooled in block.pooled.items():
        assert pooled.errors == {} and pooled.ok == 50, path
    assert block.pooled["gateway"].proc["gateway"].cpu_s > 0  # the gateway's process tree was watched
    assert [p.label for p in bench.phases] == ["fixed 50/s round 1"] * 2
    assert all(service.process.poll() is not None for service in services.values())
    client = redis.Redis.from_url(url)
    try:
        assert list(client.scan_iter(match=prefix + "*")) == []
    finally:
        client.close()
