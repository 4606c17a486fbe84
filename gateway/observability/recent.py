"""The last few minutes of upstream calls per provider: error rate and latency percentiles for the console.

The router records every call it makes (``Router._observe``); the admin API reads a summary
(``gateway/console/admin.py``). Prometheus keeps the totals; this keeps what "recent" means to an
operator looking at a page: the calls of the last ``WINDOW_S`` seconds, at most ``MAX_CALLS``
of them per provider, in this process.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["MAX_CALLS", "WINDOW_S", "RecentCalls", "RecentRequests"]

WINDOW_S = 300.0
MAX_CALLS = 1000


def _percentile(ordered: list[float], fraction: float) -> float:
    """The nearest-rank percentile of an ascending list (not empty)."""
    rank = max(1, -(-len(ordered) * fraction // 1))  # ceil(len * fraction), at least the first
    return ordered[int(rank) - 1]


class RecentCalls:
    """Per provider: (monotonic time, ok, seconds) of its last calls."""

    def __init__(self, window_s: float = WINDOW_S, max_calls: int = MAX_CALLS) -> None:
        self.window_s = window_s
        self._calls: dict[str, deque[tuple[float, bool, float]]] = {}
        self._max = max_calls

    def record(self, provider: str, ok: bool, seconds: float) -> None:
        calls = self._calls.get(provider)
        if calls is None:
            calls = self._calls[provider] = deque(maxlen=self._max)
        calls.append((time.monotonic(), ok, seconds))

    def summary(self, provider: str) -> dict[str, Any]:
        """Calls, errors, error rate and p50/p95 latency (ms) within the window; None where there were no calls."""
        since = time.monotonic() - self.window_s
        recent = [call for call in self._calls.get(provider, ()) if call[0] >= since]
        errors = sum(not ok for _, ok, _ in recent)
        durations = sorted(seconds * 1000 for _, _, seconds in recent)
        return {
            "window_s": self.window_s,
            "calls": len(recent),
            "errors": errors,
            "error_rate": round(errors / len(recent), 4) if recent else None,
            "p50_ms": round(_percentile(durations, 0.5), 1) if durations else None,
            "p95_ms": round(_percentile(durations, 0.95), 1) if durations else None,
        }


class RecentRequests:
    """The last ``size`` dialect requests of this process by request id: what answered and what it cost.

    A streamed answer cannot carry ``X-Gateway-Provider`` or ``X-Gateway-Cost`` (its headers go out before
    the generation runs), so the console's playground reads them here by the ``X-Request-ID`` it was given
    (``GET /admin/api/requests/{id}``). Nothing secret is kept: no key, no prompt.
    """

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._by_id: dict[str, Callable[[], dict[str, Any]]] = {}

    def record(self, request_id: str | None, summary: Callable[[], dict[str, Any]]) -> None:
        """Keep what ``summary`` makes, made only when the console asks (most requests are never asked for)."""
        if not request_id:
            return
        self._by_id.pop(request_id, None)
        self._by_id[request_id] = summary
        while len(self._by_id) > self._size:  # dicts keep insertion order: the oldest goes first
            del self._by_id[next(iter(self._by_id))]

    def get(self, request_id: str) -> dict[str, Any] | None:
        summary = self._by_id.get(request_id)
        return summary() if summary is not None else None
