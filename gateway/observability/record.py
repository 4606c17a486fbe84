"""What one request did: the values its steps returned, for its metrics, its one log line and the console.

A ``RequestRecord`` is made once, when the request ends (``gateway.request.serve``), or when a
job's run ends (``gateway.jobs.runner``), from what the steps returned: nothing writes into it.
"""

from __future__ import annotations

from typing import Any

import msgspec
import structlog

from gateway.admission.accounting import Cost
from gateway.observability import metrics
from gateway.routing.attempts import Attempts
from schemas.canonical import Energy

__all__ = ["RequestRecord"]

log = structlog.get_logger("gateway.request")


class RequestRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What one request did, for its metrics and its one log line."""

    dialect: str
    operation: str
    model: str = "unknown"
    provider: str = "none"
    outcome: str = "internal"
    images: int = 0
    attempts: Attempts = msgspec.field(default_factory=Attempts)
    key: str = "none"  # the inbound key's name
    cost: Cost | None = None  # of an answered request; None: unpriced (gateway/admission/accounting.py)
    energy: Energy | None = None

    def summary(self, seconds: float) -> dict[str, Any]:
        """What the console may show of this request (no key, no prompt)."""
        return {
            "dialect": self.dialect,
            "model": self.model,
            "provider": self.provider,
            "outcome": self.outcome,
            "images": self.images,
            "attempts": self.attempts.calls,
            "cost": self.cost.header() if self.cost is not None else None,
            "energy_kwh": self.energy.kwh if self.energy is not None else None,
            "energy_method": self.energy.method if self.energy is not None else None,
            "duration_ms": round(seconds * 1000, 2),
        }

    def count_images(self) -> None:
        """The images this request answered, and their cost (or that they were unpriced)."""
        if not self.images:
            return
        metrics.child(metrics.IMAGES, self.provider).inc(self.images)
        if self.cost is not None:
            labels = (self.model, self.provider, self.key, self.cost.currency)
            metrics.child(metrics.COST, *labels).inc(float(self.cost.amount))
        else:
            metrics.child(metrics.UNPRICED_IMAGES, self.model, self.provider, self.key).inc(self.images)

    def finish(self, seconds: float, prompt: str | None = None) -> None:
        """Count the request and write its one log line (the prompt goes there only: the record never holds it,
        so the console's last few hundred records never keep a client's megabytes)."""
        metrics.child(metrics.REQUESTS, self.dialect, self.operation, self.model, self.provider, self.outcome).inc()
        metrics.child(metrics.REQUEST_DURATION, self.dialect, self.outcome).observe(seconds)
        self.count_images()
        log.info(
            "request",
            dialect=self.dialect,
            operation=self.operation,
            model=self.model,
            provider=self.provider,
            outcome=self.outcome,
            images=self.images,
            cost=str(self.cost) if self.cost is not None else ("unpriced" if self.images else None),
            tried=[f"{provider}:{outcome}" for provider, outcome in self.attempts.tried],
            upstream_ms=self.attempts.durations_ms,
            retries=self.attempts.retries,
            fallbacks=self.attempts.fallbacks,
            duration_ms=round(seconds * 1000, 2),
            prompt=prompt,
            energy_kwh=self.energy.kwh if self.energy else None,
            energy_method=self.energy.method if self.energy else None,
        )
