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
import os
import socket
import time
from abc import ABC, abstractmethod
from collections import Counter
from typing import Any, NamedTuple

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from gateway.accounting import Reservation
from gateway.webhooks import Delivery, WebhookTarget

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
    "RedisJobQueue",
    "Taken",
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
        """Jobs queued or running (for ``jobs.max_queued``)."""

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


_NO_BOUND = 1 << 62


class MemoryJobQueue(JobQueue):
    """Jobs in this process: an asyncio queue and a dict; lost on restart."""

    shared = False

    def __init__(self, ttl_s: float, max_bytes: int = _NO_BOUND, max_bytes_per_key: int = _NO_BOUND) -> None:
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.max_bytes_per_key = max_bytes_per_key
        self.held = 0  # bytes of the payloads of jobs not ended
        self.held_by_key: Counter[str] = Counter()
        self._jobs: dict[str, _MemoryJob] = {}
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._running = 0
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
        return self._queue.qsize() + self._running

    async def take(self, consumer: int) -> Taken:
        job_id = await self._queue.get()
        self._running += 1
        return Taken(job_id, claimed=False)

    async def keep(self, taken: Taken, consumer: int) -> None:
        """A process does not lose its own jobs."""

    async def done(self, taken: Taken) -> None:
        self._running -= 1

    async def aclose(self) -> None:
        """Nothing to release: the jobs go with the process."""


# The bytes a job holds (KEYS: bytes, held, expiry) given back: its payload is gone, or it expired.
_RELEASE = """
local function release(bytes, held, expiry, id)
  local entry = redis.call('HGET', held, id)
  redis.call('ZREM', expiry, id)
  if not entry then return end
  redis.call('HDEL', held, id)
  local size, field = string.match(entry, '^(%d+) (.*)$')
  size = tonumber(size)
  redis.call('HINCRBY', bytes, 'total', -size)
  if field ~= '' and redis.call('HINCRBY', bytes, field, -size) <= 0 then redis.call('HDEL', bytes, field) end
end
"""
# Store the record if its status is one of ARGV[4..]: the one write that changes a job's status. A job that
# ends drops its payload and gives its bytes back. KEYS: the job, then _RELEASE's; ARGV[3]: the job's id.
_REPLACE = (
    _RELEASE
    + """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return 0 end
for i = 4, #ARGV do
  if ARGV[i] == current then
    redis.call('HSET', KEYS[1], 'status', ARGV[1], 'record', ARGV[2])
    if ARGV[1] == 'succeeded' or ARGV[1] == 'failed' or ARGV[1] == 'canceled' then
      redis.call('HDEL', KEYS[1], 'payload')
      release(KEYS[2], KEYS[3], KEYS[4], ARGV[3])
    end
    return 1
  end
end
return 0
"""
)
# Queue a job if its payload fits: 0, else 1 (past the key's share) or 2 (past the total). Expired jobs give
# their bytes back first. KEYS: the job, the stream, then _RELEASE's. ARGV: status, record, payload, ttl_s,
# job id, now, expires at, the key's field ('' on an open gateway), max bytes, max bytes per key.
_PUT = (
    _RELEASE
    + """
local expired = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', ARGV[6], 'LIMIT', 0, 64)
for _, id in ipairs(expired) do release(KEYS[3], KEYS[4], KEYS[5], id) end
local size = string.len(ARGV[3])
local field = ARGV[8]
if field ~= '' and tonumber(redis.call('HGET', KEYS[3], field) or '0') + size > tonumber(ARGV[10]) then
  return 1
end
if tonumber(redis.call('HGET', KEYS[3], 'total') or '0') + size > tonumber(ARGV[9]) then return 2 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'record', ARGV[2], 'payload', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('XADD', KEYS[2], '*', 'job', ARGV[5])
redis.call('HINCRBY', KEYS[3], 'total', size)
if field ~= '' then redis.call('HINCRBY', KEYS[3], field, size) end
redis.call('HSET', KEYS[4], ARGV[5], size .. ' ' .. field)
redis.call('ZADD', KEYS[5], ARGV[7], ARGV[5])
return 0
"""
)
# Progress only while the job is there (an expired job is not brought back).
_PROGRESS = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'progress', ARGV[1]) end
return 0
"""
_CANCEL = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'cancel', '1') end
return 0
"""
_MAX_BLOCK_MS = 5000  # the longest blocking read of an idle consumer


class RedisJobQueue(JobQueue):
    """Jobs in Redis, shared by every replica (see the module doc)."""

    shared = True

    def __init__(
        self,
        url: str,
        prefix: str,
        ttl_s: int,
        claim_after_s: float,
        max_bytes: int = _NO_BOUND,
        max_bytes_per_key: int = _NO_BOUND,
    ) -> None:
        # Its own client: a blocking XREADGROUP outlives the rate limiter's short socket timeout.
        self.redis = aioredis.Redis.from_url(url, socket_timeout=10 + _MAX_BLOCK_MS / 1000, socket_connect_timeout=5)
        self.prefix = prefix
        self.stream = f"{prefix}jobs:queue"
        self.group = "runners"
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.max_bytes_per_key = max_bytes_per_key
        self.accounting = [f"{prefix}jobs:bytes", f"{prefix}jobs:held", f"{prefix}jobs:expiry"]
        self.claim_after_ms = int(claim_after_s * 1000)
        # An idle process looks for abandoned entries a few times per claim_after_s, one consumer at a
        # time, and its blocking reads last as long: an idle gateway wakes a few times a minute, not 8 times
        # a second. A new entry ends a blocking read at once whatever its length.
        self.claim_every_s = min(_MAX_BLOCK_MS, max(100, self.claim_after_ms // 4)) / 1000
        self._next_claim = 0.0
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self._replace = self.redis.register_script(_REPLACE)
        self._put = self.redis.register_script(_PUT)
        self._progress = self.redis.register_script(_PROGRESS)
        self._cancel = self.redis.register_script(_CANCEL)
        self._group_ready = False

    def _key(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def put(self, record: JobRecord, payload: bytes) -> None:
        await self._ensure_group()
        now = int(time.time())
        args: list[str | bytes | int] = [
            record.status,
            msgspec.json.encode(record),
            payload,
            self.ttl_s,
            record.id,
            now,
            record.created_at + self.ttl_s,
            f"key:{record.key}" if record.key is not None else "",
            self.max_bytes,
            self.max_bytes_per_key,
        ]
        refused = int(await self._put(keys=[self._key(record.id), self.stream, *self.accounting], args=args))
        if refused:
            raise QueueFull(per_key=refused == 1, size=len(payload))

    async def get(self, job_id: str) -> tuple[JobRecord, JobProgress | None] | None:
        raw, progress = await self.redis.hmget(self._key(job_id), ["record", "progress"])
        if raw is None:
            return None
        record = msgspec.json.decode(raw, type=JobRecord)
        return record, msgspec.json.decode(progress, type=JobProgress) if progress else None

    async def replace(self, record: JobRecord, expect: frozenset[str]) -> bool:
        args: list[str | bytes] = [record.status, msgspec.json.encode(record), record.id, *sorted(expect)]
        return bool(await self._replace(keys=[self._key(record.id), *self.accounting], args=args))

    async def set_progress(self, job_id: str, progress: JobProgress) -> None:
        await self._progress(keys=[self._key(job_id)], args=[msgspec.json.encode(progress)])

    async def payload(self, job_id: str) -> bytes | None:
        found = await self.redis.hget(self._key(job_id), "payload")
        return found.encode() if isinstance(found, str) else found

    async def request_cancel(self, job_id: str) -> None:
        await self._cancel(keys=[self._key(job_id)])

    async def cancel_requested(self, job_id: str) -> bool:
        return bool(await self.redis.hexists(self._key(job_id), "cancel"))

    async def waiting(self) -> int:
        await self._ensure_group()
        return int(await self.redis.xlen(self.stream))

    def _consumer(self, consumer: int) -> str:
        return f"{self.name}:{consumer}"

    async def take(self, consumer: int) -> Taken:
        await self._ensure_group()
        name = self._consumer(consumer)
        block_ms = int(self.claim_every_s * 1000)
        while True:
            # First a job whose process stopped keeping it (when it is time to look), then a new one.
            if time.monotonic() >= self._next_claim:
                self._next_claim = time.monotonic() + self.claim_every_s
                claimed: Any = await self.redis.xautoclaim(
                    self.stream, self.group, name, self.claim_after_ms, "0-0", count=1
                )
                for entry_id, fields in claimed[1]:
                    if fields:  # an entry deleted meanwhile comes back without its fields
                        self._next_claim = 0.0  # there may be more: the next take looks again at once
                        return Taken(_text(fields[b"job"]), claimed=True, handle=_text(entry_id))
            read: Any = await self.redis.xreadgroup(self.group, name, {self.stream: ">"}, count=1, block=block_ms)
            for _, entries in read or ():
                for entry_id, fields in entries:
                    return Taken(_text(fields[b"job"]), claimed=False, handle=_text(entry_id))

    async def keep(self, taken: Taken, consumer: int) -> None:
        await self.redis.xclaim(self.stream, self.group, self._consumer(consumer), 0, [taken.handle], justid=True)

    async def done(self, taken: Taken) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream, self.group, taken.handle)
            pipe.xdel(self.stream, taken.handle)
            await pipe.execute()

    async def hand_back(self, consumers: int, keep: set[str]) -> int:
        """Every entry this process's consumers hold (``XPENDING``), but ``keep``, is made idle as if its
        keep-alives had stopped ``claim_after_s`` ago (``XCLAIM ... IDLE``): the next ``XAUTOCLAIM`` of
        another replica takes it, without waiting ``claim_after_s``."""
        handles: list[Any] = []
        for consumer in range(consumers):
            pending: Any = await self.redis.xpending_range(
                self.stream, self.group, min="-", max="+", count=10_000, consumername=self._consumer(consumer)
            )
            handles += [h for entry in pending if (h := _text(entry["message_id"])) not in keep]
        if handles:
            idle_ms = self.claim_after_ms + 60_000
            await self.redis.xclaim(self.stream, self.group, self._consumer(0), 0, handles, idle=idle_ms, justid=True)
        return len(handles)

    async def aclose(self) -> None:
        await self.redis.aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
