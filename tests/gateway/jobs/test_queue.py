"""What counts against ``jobs.max_queued``: jobs queued or running, never one that ended while its queue entry
waits for its webhook to be told (the entry is acknowledged only then, which may take the retries' minutes)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest

from gateway.jobs.queue import QUEUED, RUNNING, SUCCEEDED, JobQueue, JobRecord, MemoryJobQueue
from gateway.jobs.redis_queue import RedisJobQueue
from tests.redis_support import require_shared_redis


@pytest.fixture(params=["memory", "redis"])
async def queue(request: pytest.FixtureRequest) -> AsyncIterator[JobQueue]:
    if request.param == "memory":
        made: JobQueue = MemoryJobQueue(ttl_s=3600)
    else:
        made = RedisJobQueue(require_shared_redis(), f"test:{uuid.uuid4().hex}:", ttl_s=3600, claim_after_s=30)
    yield made
    await made.aclose()


def record(status: str = QUEUED) -> JobRecord:
    now = int(time.time())
    return JobRecord(id=uuid.uuid4().hex, key="alice", route="/v1/images/generations", status=status,
                     created_at=now, updated_at=now)  # fmt: skip


async def test_an_ended_job_no_longer_counts_before_its_entry_is_let_go(queue: JobQueue) -> None:
    first, second = record(), record()
    await queue.put(first, b'{"prompt": "one"}')
    await queue.put(second, b'{"prompt": "two"}')
    assert await queue.waiting() == 2
    taken = await queue.take(0)
    job = (await queue.get(taken.job_id))[0]  # type: ignore[index]
    job.status = RUNNING
    assert await queue.replace(job, frozenset({QUEUED}))
    assert await queue.waiting() == 2  # running still counts
    job.status = SUCCEEDED
    assert await queue.replace(job, frozenset({RUNNING}))
    assert await queue.waiting() == 1  # ended: its webhook may still be told, it holds no place
    await queue.done(taken)
    assert await queue.waiting() == 1  # the other, still queued
