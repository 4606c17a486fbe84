"""The bounded queue and its dynamic batching, without a device: jobs in, batches out."""

from __future__ import annotations

import asyncio

import pytest

from local_backend.batching import BatchQueue, Job
from local_backend.rules import Work
from schemas.canonical import ErrorCode, GatewayError, Operation


def job(
    n: int = 1,
    *,
    width: int = 64,
    model: str = "tiny",
    edit: bool = False,
    at: float | None = None,
    batch_pixels: int = 2 * 1024 * 1024,
    alone: bool = False,
) -> Job:
    loop = asyncio.get_running_loop()
    work = Work(
        model=model,
        operation=Operation.EDIT if edit else Operation.GENERATE,
        prompt="p",
        negative_prompt=None,
        n=n,
        width=width,
        height=64,
        steps=2,
        guidance=2.0,
        seed=1,
        strength=0.8,
        batch_pixels=batch_pixels,
        alone=alone,
    )
    return Job(work=work, future=loop.create_future(), enqueued_at=loop.time() if at is None else at)


async def busy(queue: BatchQueue) -> None:
    """Put the device to work: a batch taken and not yet over, as the engine's loop leaves it while drawing."""
    queue.put(job(width=32))
    assert len(await queue.next_batch()) == 1


async def test_compatible_jobs_form_one_batch_up_to_the_image_limit() -> None:
    queue = BatchQueue(capacity=10, max_images=4, window_s=0)
    jobs = [job(), job(width=128), job(2), job(), job()]
    for item in jobs:
        queue.put(item)
    first = await queue.next_batch()
    assert first == [jobs[0], jobs[2], jobs[3]]  # 1 + 2 + 1 images; the 128-wide one waits for its own batch
    assert await queue.next_batch() == [jobs[1]]
    assert await queue.next_batch() == [jobs[4]]
    assert len(queue) == 0


async def test_the_pixel_budget_sets_how_many_images_of_a_size_share_a_call() -> None:
    queue = BatchQueue(capacity=20, max_images=8, window_s=0)
    budget = 3 * 64 * 64  # three 64x64 images; one 256x64 image is over it and still runs, alone
    small = [job(batch_pixels=budget) for _ in range(4)]
    large = [job(width=256, batch_pixels=budget) for _ in range(2)]
    for item in [*small, *large]:
        queue.put(item)
    assert await queue.next_batch() == small[:3]
    assert await queue.next_batch() == small[3:]
    assert await queue.next_batch() == [large[0]]
    assert await queue.next_batch() == [large[1]]
    assert small[0].work.images_per_call(8) == 3 and large[0].work.images_per_call(8) == 1
    assert job(batch_pixels=10**9).work.images_per_call(8) == 8  # max_images still caps a wide budget


async def test_a_request_of_a_model_whose_images_depend_on_their_companions_runs_alone() -> None:
    queue = BatchQueue(capacity=10, max_images=4, window_s=0)
    jobs = [job(alone=True), job(alone=True)]
    for item in jobs:
        queue.put(item)
    assert await queue.next_batch() == [jobs[0]]
    assert await queue.next_batch() == [jobs[1]]
    assert jobs[0].work.images_per_call(4) == 1


async def test_edits_run_alone() -> None:
    queue = BatchQueue(capacity=10, max_images=4, window_s=0)
    edits = [job(edit=True), job(edit=True)]
    for item in edits:
        queue.put(item)
    assert await queue.next_batch() == [edits[0]]
    assert await queue.next_batch() == [edits[1]]


async def test_a_job_arriving_at_a_busy_device_waits_the_window_for_companions() -> None:
    queue = BatchQueue(capacity=10, max_images=4, window_s=0.2)
    await busy(queue)
    first = job()
    queue.put(first)
    batch = asyncio.create_task(queue.next_batch())
    await asyncio.sleep(0.05)
    assert not batch.done()
    companion = job()
    queue.put(companion)
    assert await batch == [first, companion]
    assert (queue.started_at_once, queue.held) == (1, 1)


async def test_a_job_that_waited_out_a_batch_still_holds_the_window_after_it_for_its_clients() -> None:
    """Closed-loop clients: one arrives while the device draws three others' batch, longer than the window.
    When that batch ends its three clients come back at once; the waiting job holds for them."""
    queue = BatchQueue(capacity=10, max_images=4, window_s=0.5)
    await busy(queue)
    loop = asyncio.get_running_loop()
    waiting = job(at=loop.time() - 10)  # arrived long before: its own window is over
    queue.put(waiting)
    assert waiting.hold
    batch = asyncio.create_task(queue.next_batch())  # the device is free now
    await asyncio.sleep(0.05)
    assert not batch.done()
    returning = [job(), job(), job()]
    for item in returning:
        queue.put(item)
    assert await asyncio.wait_for(batch, 1) == [waiting, *returning]  # full: no more wait
    assert queue.held == 1


async def test_a_lone_job_at_an_idle_device_starts_at_once() -> None:
    queue = BatchQueue(capacity=10, max_images=4, window_s=3600)  # a wait would never end within the test
    lone = job()
    queue.put(lone)
    assert await asyncio.wait_for(queue.next_batch(), 5) == [lone]
    assert (queue.started_at_once, queue.held) == (1, 0)
    # Once the device is idle again, the next lone job does not wait either.
    batch = asyncio.create_task(queue.next_batch())
    await asyncio.sleep(0)
    later = job()
    queue.put(later)
    assert await asyncio.wait_for(batch, 5) == [later]
    assert (queue.started_at_once, queue.held) == (2, 0)


async def test_jobs_behind_others_hold_for_companions() -> None:
    queue = BatchQueue(capacity=10, max_images=4, window_s=3600)
    first, second = job(width=128), job()
    queue.put(first)
    queue.put(second)
    assert (first.hold, second.hold) == (False, True)  # the second arrived while another waited


async def test_the_window_ends_early_when_the_batch_is_full() -> None:
    queue = BatchQueue(capacity=10, max_images=2, window_s=30)
    await busy(queue)
    a, b = job(), job()
    queue.put(a)
    batch = asyncio.create_task(queue.next_batch())
    await asyncio.sleep(0)
    queue.put(b)
    assert await asyncio.wait_for(batch, 1) == [a, b]


async def test_jobs_that_waited_long_enough_do_not_wait_again() -> None:
    queue = BatchQueue(capacity=10, max_images=4, window_s=30)
    old = job(at=asyncio.get_running_loop().time() - 60)
    queue.put(old)
    assert await asyncio.wait_for(queue.next_batch(), 1) == [old]


async def test_a_full_queue_refuses_at_once() -> None:
    queue = BatchQueue(capacity=2, max_images=4, window_s=0)
    queue.put(job())
    queue.put(job())
    with pytest.raises(GatewayError) as caught:
        queue.put(job())
    assert caught.value.code is ErrorCode.OVERLOADED and caught.value.status == 503


async def test_a_discarded_job_never_comes_out() -> None:
    queue = BatchQueue(capacity=10, max_images=4, window_s=0.5)
    await busy(queue)
    gone, stays = job(width=128), job()
    queue.put(gone)
    batch = asyncio.create_task(queue.next_batch())
    await asyncio.sleep(0.01)
    queue.put(stays)
    assert queue.discard(gone) is True
    assert await asyncio.wait_for(batch, 2) == [stays]
    assert queue.discard(gone) is False
