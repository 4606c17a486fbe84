"""The job queue in Redis: a stream read by a consumer group, records and payloads beside it, for every replica."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from gateway.jobs.queue import NO_BOUND, JobProgress, JobQueue, JobRecord, QueueFull, Taken

__all__ = ["RedisJobQueue"]

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
        max_bytes: int = NO_BOUND,
        max_bytes_per_key: int = NO_BOUND,
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
        """Jobs queued or running and not expired: those whose payload is still held. A job that ended gave it
        back, though its queue entry stays until its webhook is told (which may take the retries' minutes)."""
        return int(await self.redis.zcount(self.accounting[2], f"({int(time.time())}", "+inf"))

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
