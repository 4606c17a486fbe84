"""The last hour of this process's own metrics, one reading a minute: the console's charts without Prometheus.

``MetricHistory.sample`` reads the metrics a chart draws (``Source``: a counter, gauge or histogram of
``gateway/observability/metrics.py``, summed by one label) from this process's registry and keeps the reading
in a ring of ``SAMPLES + 1``; ``series`` turns consecutive readings into points: what a counter gained between
two readings, a gauge's value, a histogram's 95th percentile over the observations between two readings.
The last point is read when asked: the current minute so far. It is bounded (a few hundred numbers a
reading) and it knows this process only: another replica's or server worker's traffic is not in it.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

__all__ = ["SAMPLES", "STEP_S", "MetricHistory", "Source", "quantile"]

STEP_S = 60.0  # a reading a minute
SAMPLES = 60  # an hour of them

# One reading of a source: series name → a counter's total or a gauge's value; a histogram's series name →
# its cumulative count at each bucket's upper bound.
Reading = dict[str, float] | dict[str, dict[float, float]]


@dataclass(frozen=True)
class Source:
    """One line of a chart in this process: ``metric`` summed by the label ``by`` (each of its values a series),
    or into one series ``name``; samples whose label ``skip[0]`` is ``skip[1]`` left out; values times ``scale``
    (a histogram's: its percentile)."""

    metric: Counter | Gauge | Histogram
    by: str | None = None
    name: str = ""
    skip: tuple[str, str] | None = None
    scale: float = 1.0

    def read(self) -> Reading:
        """The source's numbers now."""
        histogram = isinstance(self.metric, Histogram)
        totals: dict[str, Any] = {}
        for family in self.metric.collect():
            for sample in family.samples:
                if histogram and not sample.name.endswith("_bucket"):
                    continue
                if not histogram and sample.name.endswith("_created"):
                    continue
                if self.skip is not None and sample.labels.get(self.skip[0]) == self.skip[1]:
                    continue
                series = sample.labels.get(self.by, "") if self.by else self.name
                if histogram:
                    buckets = totals.setdefault(series, {})
                    bound = float(sample.labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + sample.value
                else:
                    totals[series] = totals.get(series, 0.0) + sample.value
        return totals

    def point(self, before: Reading | None, after: Reading, series: str) -> float | None:
        """The point of ``series`` between two readings (None: nothing to draw)."""
        if isinstance(self.metric, Gauge):
            value = after.get(series)
            return None if value is None else round(float(value) * self.scale, 6)  # type: ignore[arg-type]
        if before is None:
            return None
        if isinstance(self.metric, Histogram):
            now: dict[float, float] = after.get(series) or {}  # type: ignore[assignment]
            then: dict[float, float] = before.get(series) or {}  # type: ignore[assignment]
            found = quantile(0.95, {bound: count - then.get(bound, 0.0) for bound, count in now.items()})
            return None if found is None else round(found * self.scale, 3)
        gained = float(after.get(series, 0.0)) - float(before.get(series, 0.0))  # type: ignore[arg-type]
        return round(max(gained, 0.0) * self.scale, 9)  # a counter that went back (a reset) gained nothing


def quantile(fraction: float, buckets: dict[float, float]) -> float | None:
    """Prometheus's ``histogram_quantile`` over cumulative bucket counts (upper bound → count); None: no
    observations. Linear within the bucket; past the highest finite bound, that bound."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = fraction * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


class MetricHistory:
    """The ring of readings of ``sources``; ``sample`` once a minute, ``series`` when a page asks."""

    def __init__(self, sources: Sequence[Source], samples: int = SAMPLES) -> None:
        self.sources = list(sources)
        self._ring: deque[tuple[float, list[Reading]]] = deque(maxlen=samples + 1)

    @property
    def started(self) -> float | None:
        """When the oldest reading kept was taken (epoch seconds); None before the first."""
        return self._ring[0][0] if self._ring else None

    def read(self) -> list[Reading]:
        return [source.read() for source in self.sources]

    def sample(self, now: float | None = None) -> None:
        """Keep a reading of every source, taken now."""
        self._ring.append((time.time() if now is None else now, self.read()))

    def series(self, now: float | None = None) -> tuple[list[float], list[dict[str, list[float | None]]]]:
        """The points' times (epoch seconds: each kept reading's but the first, then now) and, for each source,
        its series by name with a point at each time."""
        readings = [*self._ring, (time.time() if now is None else now, self.read())]
        times = [at for at, _ in readings[1:]]
        found: list[dict[str, list[float | None]]] = []
        for number, source in enumerate(self.sources):
            names = sorted({name for _, reading in readings for name in reading[number]})
            found.append(
                {
                    name: [
                        source.point(readings[index - 1][1][number], readings[index][1][number], name)
                        for index in range(1, len(readings))
                    ]
                    for name in names
                }
            )
        return times, found
