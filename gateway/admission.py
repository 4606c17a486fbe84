"""Admission: what a request must get before the gateway spends memory or an upstream call on it.

The in-flight body budget lives here; the model-access and rate-limit checks are in
``gateway.state.Gateway.admit``.
"""

from __future__ import annotations

from gateway import metrics

__all__ = ["BodyBudget"]


class BodyBudget:
    """Bytes of request bodies the process holds at once (``server.max_inflight_body_bytes``).

    A request reserves its body's size before reading it and gives it back when it ends,
    so a flood of large bodies is refused as ``overloaded`` instead of growing the process
    past what the pod was sized for. One event loop per process: no lock is needed.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> bool:
        """Reserve ``size`` bytes; False (nothing reserved) when that would pass the limit."""
        if self.used + size > self.limit:
            return False
        self.used += size
        metrics.BODY_BYTES_IN_FLIGHT.set(self.used)
        return True

    def give(self, size: int) -> None:
        self.used -= size
        metrics.BODY_BYTES_IN_FLIGHT.set(self.used)
