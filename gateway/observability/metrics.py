"""Prometheus metrics, served at ``/metrics``.

Names carry their unit and counters end in ``_total``. Every label has a bounded set of
values: dialects and operations are fixed, models and providers come from the config
(an unknown model is counted as ``unknown``), outcomes are the error taxonomy. Never a
prompt, a user or a key. With ``PROMETHEUS_MULTIPROC_DIR`` set (several server worker
processes), ``/metrics`` aggregates every process's files.
"""

from __future__ import annotations

import functools
import os
from typing import TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

disable_created_metrics()  # the *_created series double the output and no dashboard reads them

__all__ = ["CONTENT_TYPE_LATEST", "child", "render"]

NAMESPACE = "image_gateway"
# Image generation is slow: buckets reach minutes; the low ones show the gateway's own cost.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)


M = TypeVar("M", Counter, Gauge, Histogram)


@functools.cache
def child(metric: M, *labels: str) -> M:
    """``metric.labels(*labels)``, looked up once: label values are bounded (see above), so is this cache."""
    return metric.labels(*labels)


REQUESTS = Counter(
    "requests",
    "Image requests answered, by inbound dialect, model, provider that answered and outcome (ok or error code).",
    ["dialect", "operation", "model", "provider", "outcome"],
    namespace=NAMESPACE,
)
REQUEST_DURATION = Histogram(
    "request_duration_seconds",
    "Whole-request latency as the client sees it.",
    ["dialect", "outcome"],
    namespace=NAMESPACE,
    buckets=LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge(
    "in_flight_requests",
    "Image requests being served now.",
    namespace=NAMESPACE,
    multiprocess_mode="livesum",
)
STREAMS_OPEN = Gauge(
    "streams_open",
    "Streamed answers (server-sent events) being sent now.",
    namespace=NAMESPACE,
    multiprocess_mode="livesum",
)
STREAM_EVENTS = Counter(
    "stream_events",
    "Server-sent events sent on streamed answers, by kind (partial_image, completed, error).",
    ["event"],
    namespace=NAMESPACE,
)
UPSTREAM_CALLS = Counter(
    "upstream_calls",
    "Calls to a provider, by outcome (ok or error code).",
    ["provider", "outcome"],
    namespace=NAMESPACE,
)
UPSTREAM_DURATION = Histogram(
    "upstream_call_duration_seconds",
    "Latency of one call to a provider.",
    ["provider", "outcome"],
    namespace=NAMESPACE,
    buckets=LATENCY_BUCKETS,
)
RETRIES = Counter("retries", "Calls that were retries of a failed call.", ["provider"], namespace=NAMESPACE)
FALLBACKS = Counter(
    "fallbacks", "Times a request moved on to the next target of its model.", ["model"], namespace=NAMESPACE
)
UPSTREAM_AUTH_FAILURES = Counter(
    "upstream_auth_failures",
    "Calls a provider answered by refusing the gateway's own credentials (its 401/403): a key to renew.",
    ["provider"],
    namespace=NAMESPACE,
)
COOLDOWNS = Counter(
    "cooldowns",
    "Times a provider was cooled down after failures (or at once, its credentials refused).",
    ["provider"],
    namespace=NAMESPACE,
)
RATE_LIMITED = Counter(
    "rate_limited", "Requests refused (or targets skipped) by a rate limit, by scope.", ["scope"], namespace=NAMESPACE
)
IMAGES = Counter("images_generated", "Images returned to clients.", ["provider"], namespace=NAMESPACE)
# Cost and budgets (gateway/admission/accounting.py); `key` is the inbound key's name ("none" on an open gateway).
COST = Counter(
    "cost",
    "What answered requests cost at the configured prices, in units of `currency`.",
    ["model", "provider", "key", "currency"],
    namespace=NAMESPACE,
)
UNPRICED_IMAGES = Counter(
    "unpriced_images",
    "Images returned by targets without a price: their cost is unknown, not zero.",
    ["model", "provider", "key"],
    namespace=NAMESPACE,
)
BUDGET_REFUSED = Counter(
    "budget_refused",
    "Requests refused (insufficient_quota) because the key's budget for the period was spent.",
    ["key"],
    namespace=NAMESPACE,
)
BUDGET_SPENT = Gauge(
    "budget_spent",
    "What the key's current budget period has spent (as last settled by this gateway), in units of `currency`.",
    ["key", "currency"],
    namespace=NAMESPACE,
    multiprocess_mode="mostrecent",
)
BUDGET_AMOUNT = Gauge(
    "budget_amount",
    "The key's configured budget per period, in units of `currency`.",
    ["key", "currency"],
    namespace=NAMESPACE,
    multiprocess_mode="max",
)
BODY_BYTES_IN_FLIGHT = Gauge(
    "inbound_body_bytes_in_flight",
    "Bytes of request bodies held now, against server.max_inflight_body_bytes.",
    namespace=NAMESPACE,
    multiprocess_mode="livesum",
)
REDIS_UP = Gauge(
    "redis_up",
    "1 while the configured Redis answers, 0 while it is away.",
    namespace=NAMESPACE,
    multiprocess_mode="min",
)
IMAGE_STORE_READY = Gauge(
    "image_store_ready",
    "1 while the image store answers its check (URL answers can be kept), 0 while it does not (URL answers fail, "
    "base64 answers are served), and 0 until the first check; checked every image_store.probe_interval_s.",
    namespace=NAMESPACE,
    multiprocess_mode="min",
)
PROVIDER_READY = Gauge(
    "provider_ready",
    "1 while a provider that reports readiness can serve (the local one: a model loaded, or a worker up), 0 while "
    "it cannot; checked every server.provider_probe_interval_s. A per-target state: /ready stays 200.",
    ["provider"],
    namespace=NAMESPACE,
    multiprocess_mode="min",
)
LOCAL_QUEUE_DEPTH = Gauge(
    "local_queue_depth",
    "Requests waiting for the local backend.",
    ["model"],
    namespace=NAMESPACE,
    multiprocess_mode="livesum",
)
LOCAL_BATCH_SIZE = Histogram(
    "local_batch_size_images",
    "Images per pipeline call in the local backend.",
    ["model"],
    namespace=NAMESPACE,
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32),
)
LOCAL_BATCH_DURATION = Histogram(
    "local_batch_duration_seconds",
    "Time of one pipeline call in the local backend.",
    ["model"],
    namespace=NAMESPACE,
    buckets=LATENCY_BUCKETS,
)
WEBHOOK_DELIVERIES = Counter(
    "webhook_deliveries",
    "Webhook attempts, by outcome: ok (a 2xx), status (another answer), timeout, network_error, refused.",
    ["outcome"],
    namespace=NAMESPACE,
)
WEBHOOK_FAILURES = Counter(
    "webhook_failures",
    "Webhooks given up on, by reason: exhausted (attempts or time spent), refused (a URL or address not allowed).",
    ["reason"],
    namespace=NAMESPACE,
)
CACHE_LOOKUPS = Counter(
    "cache_lookups",
    "Seeded requests by how they were answered: hit (from the result cache), miss (generated), "
    "shared (joined an identical generation in progress).",
    ["model", "outcome"],
    namespace=NAMESPACE,
)
IDEMPOTENCY = Counter(
    "idempotent_requests",
    "Requests with an Idempotency-Key by what became of the key (gateway/request/idempotency.py): kept (a first answer "
    "kept for repeats), replayed (a repeat answered with it), conflict (422: the key was used for another "
    "request), in_progress (409: the first was still running at the repeat's deadline), unavailable (Redis away).",
    ["outcome"],
    namespace=NAMESPACE,
)
JOBS = Counter(
    "jobs",
    "Async jobs entering each status (queued, running, succeeded, failed, canceled), across this process's work.",
    ["status"],
    namespace=NAMESPACE,
)
JOBS_WAITING = Gauge(
    "jobs_waiting",
    "Async jobs queued or running in the job queue (every replica's, with Redis), as this process last read it "
    "(every 15 s, gateway/console/charts.py).",
    namespace=NAMESPACE,
    multiprocess_mode="mostrecent",
)
JOBS_RUNNING = Gauge(
    "jobs_running", "Async jobs this process is running now.", namespace=NAMESPACE, multiprocess_mode="livesum"
)
JOB_QUEUE_AGE = Histogram(
    "job_queue_age_seconds",
    "How long an async job waited in the queue before it started.",
    namespace=NAMESPACE,
    buckets=LATENCY_BUCKETS,
)
JOB_CLAIMS = Counter(
    "job_claims",
    "Async jobs taken over from a process that stopped keeping them (a lost replica), by submitting dialect.",
    ["dialect"],
    namespace=NAMESPACE,
)

ENERGY = Counter(
    "energy_kwh",
    "Energy of answered requests (kWh of IT energy), by model, provider and method (measured, estimated, reported).",
    ["model", "provider", "method"],
    namespace=NAMESPACE,
)
CARBON = Counter(
    "carbon_grams",
    "Carbon of answered requests (g CO2, the site's PUE and grid intensity applied), by model and provider.",
    ["model", "provider"],
    namespace=NAMESPACE,
)


def render() -> bytes:
    """The exposition text: this process's registry, or every worker's when in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()


class LocalBackendMetrics:
    """The local engine's observer: feeds the ``image_gateway_local_*`` families."""

    def queue_depth(self, model: str, depth: int) -> None:
        LOCAL_QUEUE_DEPTH.labels(model).set(depth)

    def batch_drawn(self, model: str, images: int, seconds: float) -> None:
        LOCAL_BATCH_SIZE.labels(model).observe(images)
        LOCAL_BATCH_DURATION.labels(model).observe(seconds)
