"""What was tried for one request: each target called or skipped, in order, with its outcome."""

from __future__ import annotations

__all__ = ["Attempts"]


class Attempts:
    """What was tried for one request: providers in order, with outcomes (for logs, headers, metrics)."""

    def __init__(self) -> None:
        self.tried: list[tuple[str, str]] = []
        self.durations_ms: list[float] = []  # of each call made, in order (skipped targets have none)
        self.retries = 0
        self.fallbacks = 0
        # The provider whose result the request got (a shared or cached result's too): the record names it
        # when what follows the generation fails (the image store, say).
        self.answered: str | None = None

    def record(self, provider: str, outcome: str, duration_ms: float | None = None) -> None:
        self.tried.append((provider, outcome))
        if duration_ms is not None:
            self.durations_ms.append(duration_ms)

    @property
    def calls(self) -> int:
        """Upstream calls made (skipped targets not counted)."""
        return sum(not outcome.startswith("skipped") for _, outcome in self.tried)
