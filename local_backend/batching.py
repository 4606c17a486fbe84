"""The bounded queue in front of the device, and the dynamic batching that empties it.

Requests wait here as ``Job``s. The device takes them a batch at a time: the oldest job,
plus the waiting jobs that agree with it on model, size, steps and guidance, up to the
images one pipeline call of that size may draw: ``max_images``, fewer where the model's
pixel budget (``batch_pixels``) says so (a 1024x1024 image runs alone or in a pair, small
ones batch widely). The batch window holds only while companions are likely: a job
that arrived while the device was busy or behind other waiting jobs waits up to the
window for companions, counted from its arrival or from the end of the batch it waited
behind, whichever is later (the clients of a batch just drawn are the likeliest
companions: closed-loop clients come back together); a lone job at an idle device starts
at once.
A full queue refuses at once (``overloaded``, reason ``load_shed``, with ``Retry-After``
the length of the last batch, at least a second: about when a place frees up), and a job
whose client has gone is taken out before it runs.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import msgspec

from local_backend.rules import BatchKey, Work
from schemas.canonical import ErrorCode, FailureReason, GatewayError

__all__ = ["MIN_RETRY_AFTER_S", "BatchQueue", "Job"]

# The least a refused request is asked to wait before it comes back.
MIN_RETRY_AFTER_S = 1.0


class Job(msgspec.Struct, kw_only=True):
    """One request waiting for the device; its future gets what the engine drew for it."""

    work: Work
    future: asyncio.Future[Any]
    enqueued_at: float
    # Set by ``BatchQueue.put``: companions are likely (the device was busy, or others were waiting).
    hold: bool = True

    @property
    def key(self) -> BatchKey | None:
        return self.work.batch_key

    @property
    def images(self) -> int:
        return self.work.n


class BatchQueue:
    """At most ``capacity`` jobs waiting; ``next_batch`` hands the device its next batch."""

    def __init__(self, capacity: int, max_images: int, window_s: float) -> None:
        self.capacity = capacity
        self.max_images = max_images
        self.window_s = window_s
        self._jobs: deque[Job] = deque()
        self._changed = asyncio.Event()
        self._busy = False  # the device is drawing (``next_batch`` is not being awaited)
        self._busy_since: float | None = None  # when the batch being drawn was handed out
        self.last_batch_s = 0.0  # how long the last batch kept the device, handed out to done
        # Batches whose first job started at once, and those whose first job held for companions
        # (up to the window from its arrival, which a busy device may already have used up).
        self.started_at_once = 0
        self.held = 0

    def __len__(self) -> int:
        return len(self._jobs)

    def depth_of(self, model: str) -> int:
        """Jobs for ``model`` now waiting."""
        return sum(1 for job in self._jobs if job.work.model == model)

    def put(self, job: Job) -> None:
        """Queue ``job``, or refuse it with ``overloaded`` when the queue is full."""
        if len(self._jobs) >= self.capacity:
            raise GatewayError(
                ErrorCode.OVERLOADED,
                f"the local backend is busy: {len(self._jobs)} requests are already waiting",
                retry_after=max(MIN_RETRY_AFTER_S, self.last_batch_s),
                reason=FailureReason.LOAD_SHED,
            )
        job.hold = self._busy or bool(self._jobs)
        self._jobs.append(job)
        self._changed.set()

    def pop_oldest(self) -> Job:
        return self._jobs.popleft()

    def discard(self, job: Job) -> bool:
        """Take ``job`` out if it is still waiting (its client went away); whether it was."""
        try:
            self._jobs.remove(job)
        except ValueError:
            return False
        self._changed.set()
        return True

    async def next_batch(self) -> list[Job]:
        """Wait for work, then take the oldest job and its companions out of the queue."""
        loop = asyncio.get_running_loop()
        self._busy = False
        freed = loop.time()  # the device's last batch ended now
        if self._busy_since is not None:
            self.last_batch_s = freed - self._busy_since
        while True:
            while not self._jobs:
                await self._wait_for_change(None)
            head = self._jobs[0]
            deadline = max(head.enqueued_at, freed) + self.window_s
            while (
                head.hold
                and self._jobs
                and self._jobs[0] is head
                and head.key is not None
                and self._images_like(head) < self.limit(head)
                and loop.time() < deadline
            ):
                await self._wait_for_change(deadline - loop.time())
            if self._jobs and self._jobs[0] is head:
                self._busy = True
                self._busy_since = loop.time()
                if head.hold:
                    self.held += 1
                else:
                    self.started_at_once += 1
                return self._take(head)
            # The head was dropped while it waited: start again from the new head.

    async def _wait_for_change(self, timeout: float | None) -> None:
        self._changed.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        except TimeoutError:
            pass

    def limit(self, head: Job) -> int:
        """The most images a batch led by ``head`` takes: what one pipeline call of its size may draw."""
        return head.work.images_per_call(self.max_images)

    def _images_like(self, head: Job) -> int:
        return sum(job.images for job in self._jobs if job.key == head.key)

    def _take(self, head: Job) -> list[Job]:
        """``head`` and, in queue order, the jobs with its key that still fit in its ``limit``."""
        batch, images, limit = [head], head.images, self.limit(head)
        self._jobs.popleft()
        if head.key is not None:
            for job in list(self._jobs):
                if job.key == head.key and images + job.images <= limit:
                    batch.append(job)
                    images += job.images
                    self._jobs.remove(job)
        return batch
