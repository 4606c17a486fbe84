"""What ``/ready`` answers: whether this replica belongs in the load balancer's rotation.

A replica is ready when it can serve: its config loaded, and the shared stores it needs seen usable
under their configured policy. The rule that keeps one shared store's outage from taking every
replica out at once (docs/operations.md, "Health and readiness"):

- a store that was never usable in this process (a wrong bucket, refused credentials, a Redis URL
  that never answered under ``redis.on_failure: closed``) makes the replica not ready (503): the
  mistake is this replica's (its config, its network), a rollout stops on it, and its clients go to
  replicas that can serve;
- a store seen usable once and then gone is ``degraded`` (200): every replica shares it, so no other
  replica would do better, and what the replica still serves it serves (base64 answers without the
  image store; requests without limits or budgets under ``closed``), while what needs the store fails
  with the gateway's documented error (``upstream_error``; ``overloaded`` with ``Retry-After``)
  instead of a load balancer's bare 503. With ``on_failure: open`` a lost Redis is degraded from the start.

Providers are per-target states and never make a replica unready (gateway/routing/provider_health.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.images.health import StoreHealth
from gateway.redis_health import RedisHealth

__all__ = ["Readiness"]

# A check's state, worst last; the replica's status is its worst check's.
STATUS = {"ok": "ready", "degraded": "degraded", "down": "not ready"}
ORDER = ("ok", "degraded", "down")


@dataclass
class Readiness:
    """The checks ``/ready`` reads: the image store's background check and the Redis's health."""

    store: StoreHealth
    redis: RedisHealth | None = None

    async def assess(self, redis_client: Any, on_failure: str) -> tuple[bool, dict[str, Any]]:
        """Whether the replica is ready (200), and the body's ``status`` and ``checks``."""
        checks: dict[str, Any] = {"config": "ok"}
        states = ["ok"]
        if redis_client is not None:
            try:
                await redis_client.ping()
                checks["redis"] = "ok"
                if self.redis is not None:
                    self.redis.observe(True)
            except Exception as exc:  # any failure means Redis is away; the reason is reported, never raised
                if self.redis is not None:
                    self.redis.observe(False, type(exc).__name__)
                checks["redis"] = f"unreachable ({type(exc).__name__}): {on_failure}"
                seen = self.redis is not None and self.redis.seen
                states.append("down" if on_failure == "closed" and not seen else "degraded")
        state = self.store.state()
        checks["image_store"] = self.store.public
        states.append(state)
        worst = max(states, key=ORDER.index)
        return worst != "down", {"status": STATUS[worst], "checks": checks}
