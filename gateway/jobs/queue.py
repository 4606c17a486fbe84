"""Where jobs wait and what they are: the job record, and its two stores.

``RedisJobQueue`` (``redis.url`` set): each job is a Redis hash ``<prefix>job:<id>`` (its
record as JSON, its status for compare-and-set, its progress, the canonical request as
msgpack until it ends, a cancel flag), expiring ``jobs.ttl_s`` after it was submitted; the
work queue is the Redis Stream ``<prefix>jobs:queue`` with one consumer group that every
replica's consumers share. An entry is acknowledged only after the job's end is stored; the
consumer running it keeps it fresh (``XCLAIM`` to itself), so an entry left idle longer than
``jobs.claim_after_s`` belongs to a process that stopped, and ``XAUTOCLAIM`` hands it to
another. ``MemoryJobQueue`` keeps the same in this process: jobs do not survive a restart.

The requests of jobs that have not ended (their payloads, images included) are bounded in bytes:
``jobs.max_queued_bytes`` in all, ``jobs.max_queued_bytes_per_key`` for one key. With Redis the
count is kept in Redis, by the script that queues a job (checked and counted in one step, for every
replica at once): ``<prefix>jobs:bytes`` (``total``, and ``key:<name>`` per key), the size each job
holds in ``<prefix>jobs:held`` and when it expires in ``<prefix>jobs:expiry``. A job gives its bytes
back when its payload is dropped (it ended: succeeded, failed, cancelled), or, when it expired
without ending, at the next submit (the script looks for expired ones first).
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections import Counter
from typing import Any, NamedTuple

import msgspec

from gateway.admission.accounting import Reservation
from gateway.jobs.webhooks import Delivery, WebhookTarget

__all__ = [
    "CANCELED",
    "FAILED",
    "QUEUED",
    "RUNNING",
    "SUCCEEDED",
    "TERMINAL",
    "JobProgress",
    "JobQueue",
    "JobRecord",
    "MemoryJobQueue",
    "QueueFull",
    "Taken",
    "job_body",
]

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED = "queued", "running", "succeeded", "failed", "canceled"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELED})


class JobProgress(msgspec.Struct, kw_only=True):
    step: int
    steps: int


class JobError(msgspec.Struct, kw_only=True):
    """The canonical failure of a job, to answer it again as the plain call would have (``Prefer: wait``)."""

    code: str
    message: str
    status: int
    param: str | None = None
    headers: dict[str, str] = {}


class JobRecord(msgspec.Struct, kw_only=True):
    """One job as stored. ``key`` is the inbound key's NAME (None on an open gateway), never the key."""

    id: str
    key: str | None
    route: str  # the dialect route it was submitted to (prefix + path): its endpoint and error table
    status: str
    created_at: int  # unix seconds
    updated_at: int
    request_id: str | None = None
    base_url: str = ""  # where the client reached the gateway: the base of image URLs in the result
    runs: int = 0  # times a process started it (a claim after a lost replica is one more)
    result: str | None = None  # the body the plain call would have answered (JSON text)
    error: str | None = None  # the dialect's error body (JSON text)
    failure: JobError | None = None
    headers: dict[str, str] = {}  # the plain call's X-Gateway-* headers
    webhook: WebhookTarget | None = None  # where the job's end is told, when it asked (or its key has a default)
    webhooks: list[Delivery] = []  # the deliveries of that webhook
    notified: bool = False  # the deliveries are over and recorded
    reservation: Reservation | None = None  # of the key's budget, made at submit, settled at the job's end


class QueueFull(Exception):
    """A job that would take its key's share (``per_key``) or the whole bound of queued bytes past it."""

    def __init__(self, per_key: bool, size: int) -> None:
        self.per_key = per_key
        self.size = size
        super().__init__("per key" if per_key else "total")


class Taken(NamedTuple):
    """A job a consumer took from the queue; ``claimed``: from a process that stopped."""

    job_id: str
    claimed: bool
    handle: str = ""


class JobQueue(ABC):
    """The job records and the work queue (see the module doc)."""

    shared: bool  # whether every replica sees the same jobs

    @abstractmethod
    async def put(self, record: JobRecord, payload: bytes) -> None:
        """Store a new job and queue it; ``QueueFull`` when its payload does not fit the bounds."""

    @abstractmethod
    async def get(self, job_id: str) -> tuple[JobRecord, JobProgress | None] | None: ...

    @abstractmethod
    async def replace(self, record: JobRecord, expect: frozenset[str]) -> bool:
        """Store ``record`` if the stored status is one of ``expect``; whether it was stored."""

    @abstractmethod
    async def set_progress(self, job_id: str, progress: JobProgress) -> None: ...

    @abstractmethod
    async def payload(self, job_id: str) -> bytes | None:
        """The canonical request (msgpack) of a job that has not ended."""

    @abstractmethod
    async def request_cancel(self, job_id: str) -> None: ...

    @abstractmethod
    async def cancel_requested(self, job_id: str) -> bool: ...

    @abstractmethod
    async def waiting(self) -> int:
        """Jobs queued or running (for ``jobs.max_queued``); not one that ended, even while its webhook is told."""

    @abstractmethod
    async def take(self, consumer: int) -> Taken:
        """The next job for consumer number ``consumer`` of this process (waits for one)."""

    @abstractmethod
    async def keep(self, taken: Taken, consumer: int) -> None:
        """Tell the queue the job is still being run (so no other process claims it)."""

    @abstractmethod
    async def done(self, taken: Taken) -> None:
        """The job's end is stored: it leaves the queue."""

    async def hand_back(self, consumers: int, keep: set[str]) -> int:
        """The process is stopping: give its pending entries (all but ``keep``) to another process now;
        how many. Jobs in this process go with it: nothing to give."""
        return 0

    @abstractmethod
    async def aclose(self) -> None: ...


class _MemoryJob:
    __slots__ = ("cancel", "payload", "progress", "record")

    def __init__(self, record: JobRecord, payload: bytes) -> None:
        self.record = record
        self.payload: bytes | None = payload
        self.progress: JobProgress | None = None
        self.cancel = False


NO_BOUND = 1 << 62


class MemoryJobQueue(JobQueue):
    """Jobs in this process: an asyncio queue and a dict; lost on restart."""

    shared = False

    def __init__(self, ttl_s: float, max_bytes: int = NO_BOUND, max_bytes_per_key: int = NO_BOUND) -> None:
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.max_bytes_per_key = max_bytes_per_key
        self.held = 0  # bytes of the payloads of jobs not ended
        self.held_by_key: Counter[str] = Counter()
        self._jobs: dict[str, _MemoryJob] = {}
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._holding = 0  # jobs whose payload is kept: queued or running (an ended job's webhook may still run)
        self._swept = time.monotonic()

    def _sweep(self) -> None:
        now = time.time()
        if time.monotonic() - self._swept < min(60.0, self.ttl_s):
            return
        self._swept = time.monotonic()
        for job_id in [j for j, job in self._jobs.items() if now - job.record.created_at >= self.ttl_s]:
            self._drop_payload(self._jobs.pop(job_id))

    def _drop_payload(self, job: _MemoryJob) -> None:
        """The job's request is no longer kept: its bytes are given back."""
        if job.payload is None:
            return
        size, job.payload = len(job.payload), None
        self._holding -= 1
        self.held -= size
        if job.record.key is not None:
            self.held_by_key[job.record.key] -= size
            if self.held_by_key[job.record.key] <= 0:
                del self.held_by_key[job.record.key]

    async def put(self, record: JobRecord, payload: bytes) -> None:
        self._sweep()
        size = len(payload)
        if record.key is not None and self.held_by_key[record.key] + size > self.max_bytes_per_key:
            raise QueueFull(per_key=True, size=size)
        if self.held + size > self.max_bytes:
            raise QueueFull(per_key=False, size=size)
        self.held += size
        if record.key is not None:
            self.held_by_key[record.key] += size
        self._jobs[record.id] = _MemoryJob(msgspec.structs.replace(record), payload)
        self._holding += 1
        self._queue.put_nowait(record.id)

    def _live(self, job_id: str) -> _MemoryJob | None:
        job = self._jobs.get(job_id)
        if job is not None and time.time() - job.record.created_at >= self.ttl_s:
            self._drop_payload(self._jobs.pop(job_id))
            return None
        return job

    async def get(self, job_id: str) -> tuple[JobRecord, JobProgress | None] | None:
        job = self._live(job_id)
        if job is None:
            return None
        return msgspec.structs.replace(job.record), job.progress  # a copy: callers change theirs

    async def replace(self, record: JobRecord, expect: frozenset[str]) -> bool:
        job = self._live(record.id)
        if job is None or job.record.status not in expect:
            return False
        job.record = msgspec.structs.replace(record)
        if record.status in TERMINAL:
            self._drop_payload(job)
        return True

    async def set_progress(self, job_id: str, progress: JobProgress) -> None:
        job = self._live(job_id)
        if job is not None:
            job.progress = progress

    async def payload(self, job_id: str) -> bytes | None:
        job = self._live(job_id)
        return job.payload if job is not None else None

    async def request_cancel(self, job_id: str) -> None:
        job = self._live(job_id)
        if job is not None:
            job.cancel = True

    async def cancel_requested(self, job_id: str) -> bool:
        job = self._live(job_id)
        return job is not None and job.cancel

    async def waiting(self) -> int:
        return self._holding

    async def take(self, consumer: int) -> Taken:
        job_id = await self._queue.get()
        return Taken(job_id, claimed=False)

    async def keep(self, taken: Taken, consumer: int) -> None:
        """A process does not lose its own jobs."""

    async def done(self, taken: Taken) -> None:
        """The entry is gone with ``take``; what counts (``waiting``) went when the job ended."""

    async def aclose(self) -> None:
        """Nothing to release: the jobs go with the process."""


# The bytes a job holds (KEYS: bytes, held, expiry) given back: its payload is gone, or it expired.


def job_body(record: JobRecord, progress: JobProgress | None) -> dict[str, Any]:
    """What ``GET /v1/jobs/{id}`` answers."""
    body: dict[str, Any] = {
        "id": record.id,
        "status": record.status,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }
    if progress is not None:
        body["progress"] = {"step": progress.step, "steps": progress.steps}
    if record.result is not None:
        body["result"] = msgspec.Raw(record.result.encode())
    if record.error is not None:
        body["error"] = msgspec.Raw(record.error.encode())
    if record.webhook is not None:
        body["webhooks"] = record.webhooks  # each attempt: {attempt, at, status, error}; [] until the job ends
    return body
