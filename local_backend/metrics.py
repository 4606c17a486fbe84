"""The GPU worker's Prometheus metrics, served at its ``/metrics`` (behind its ``worker_token``).

The queue and batch families carry the names the gateway's in-process engine uses
(``image_gateway_local_queue_depth``, ``image_gateway_local_batch_size_images``,
``image_gateway_local_batch_duration_seconds``), so the dashboard's local-backend row and the
queue-backlog alert read both: a gateway whose local provider runs on workers has no engine,
and so none of these series itself. What only a worker knows is ``image_gateway_worker_*``:
its requests by outcome, images and energy, whether it is healthy, each model's state.
(The gateway counts the images and energy of the answers it gets in its own families; the
worker's are named apart so that a sum over both jobs never counts one image twice.)

One registry per worker app (not the process's default): nothing here needs the gateway,
and several workers in one process (tests) keep their own counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from local_backend.engine import LocalEngine

__all__ = ["BATCH_SIZE_BUCKETS", "CONTENT_TYPE", "LATENCY_BUCKETS", "WorkerMetrics"]

NAMESPACE = "image_gateway"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The gateway's buckets for the same families (gateway/observability/metrics.py; a test holds the two equal).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32)
READY = "ready"


class _EngineCollector(Collector):
    """Read from the engine at each scrape: health, each model's state, what runs, what was refused or dropped."""

    def __init__(self, engine: LocalEngine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self.engine.stats()
        yield GaugeMetricFamily(
            f"{NAMESPACE}_worker_healthy",
            "1 while every configured model is loaded (/health 200), 0 otherwise (degraded or unavailable).",
            value=1 if self.engine.healthy else 0,
        )
        models = GaugeMetricFamily(
            f"{NAMESPACE}_worker_model_ready",
            "1 for a model loaded on this worker, 0 for one that is not.",
            labels=["model"],
        )
        for name, state in stats.models.items():
            models.add_metric([name], 1 if state == READY else 0)
        yield models
        yield GaugeMetricFamily(
            f"{NAMESPACE}_worker_running_images", "Images in the pipeline call under way.", value=stats.running
        )
        yield CounterMetricFamily(
            f"{NAMESPACE}_worker_requests_refused",
            "Requests refused because the queue was full (overloaded).",
            value=stats.requests_refused,
        )
        yield CounterMetricFamily(
            f"{NAMESPACE}_worker_requests_dropped",
            "Requests dropped from the queue because their caller left.",
            value=stats.requests_dropped,
        )


class WorkerMetrics:
    """The worker's metrics; the engine's observer (queue depth, batches) and the server's counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.queue_depth_gauge = Gauge(
            "local_queue_depth",
            "Requests waiting for the local backend.",
            ["model"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "local_batch_size_images",
            "Images per pipeline call in the local backend.",
            ["model"],
            namespace=NAMESPACE,
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.batch_duration = Histogram(
            "local_batch_duration_seconds",
            "Time of one pipeline call in the local backend.",
            ["model"],
            namespace=NAMESPACE,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "worker_requests",
            "Requests to this worker's /v1/generate by outcome: ok, or the canonical error code (unauthorized: a "
            "gateway with another worker_token; overloaded: a full queue), or client_closed.",
            ["outcome"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.images = Counter(
            "worker_images_generated",
            "Images this worker drew and returned, by model.",
            ["model"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.energy = Counter(
            "worker_energy_kwh",
            "Energy of the requests this worker answered (kWh), by model and method (measured, estimated).",
            ["model", "method"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self._engine_collector: _EngineCollector | None = None

    # --- the engine's observer ---

    def queue_depth(self, model: str, depth: int) -> None:
        self.queue_depth_gauge.labels(model).set(depth)

    def batch_drawn(self, model: str, images: int, seconds: float) -> None:
        self.batch_size.labels(model).observe(images)
        self.batch_duration.labels(model).observe(seconds)

    # --- the server's ---

    def attach(self, engine: LocalEngine) -> None:
        """Read the engine's state at each scrape (once it is started)."""
        self.detach()
        self._engine_collector = _EngineCollector(engine)
        self.registry.register(self._engine_collector)

    def detach(self) -> None:
        if self._engine_collector is not None:
            self.registry.unregister(self._engine_collector)
            self._engine_collector = None

    def answered(self, model: str, images: int, energy_kwh: float | None, method: str | None) -> None:
        self.requests.labels("ok").inc()
        self.images.labels(model).inc(images)
        if energy_kwh is not None and method:
            self.energy.labels(model, method).inc(energy_kwh)

    def failed(self, outcome: str) -> None:
        self.requests.labels(outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
