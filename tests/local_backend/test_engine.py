"""The engine: one device thread, a bounded queue, dynamic batching, seeds, cancellation, clear errors."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import msgspec
import pytest
from PIL import Image

from local_backend.engine import LocalEngine
from schemas.canonical import ErrorCode, FailureReason, GatewayError, ImageRequest, Operation
from schemas.dialect import image_dimensions
from schemas.local import LocalModelSettings
from tests.local_backend.bad_images import bomb_png, huge_valid_png, truncated_png, zero_png
from tests.local_backend.engines import TINY, held_device, local_settings, running_engine


def ask(prompt: str = "a lighthouse", **fields: object) -> ImageRequest:
    return ImageRequest(model="tiny", prompt=prompt, **fields)  # type: ignore[arg-type]


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "orange").save(buffer, format="PNG")
    return buffer.getvalue()


async def test_a_result_holds_png_bytes_size_and_seed() -> None:
    async with running_engine(local_settings()) as engine:
        result = await engine.generate(ask(seed=42, n=2, width=64, height=128))
    assert result.seed == 42 and result.model == "tiny" and result.usage.images_generated == 2
    assert [image.seed for image in result.images] == [42, 43]
    for image in result.images:
        assert image.data is not None and image.data.startswith(b"\x89PNG")
        assert image_dimensions(image.data) == (64, 128) == (image.width, image.height)
        assert image.media_type == "image/png"
    assert result.timings.inference is not None and result.timings.total is not None


async def test_same_seed_same_bytes_and_a_chosen_seed_is_returned() -> None:
    async with running_engine(local_settings()) as engine:
        first = await engine.generate(ask(seed=7))
        again = await engine.generate(ask(seed=7))
        other = await engine.generate(ask(seed=8))
        chosen = await engine.generate(ask())
        replay = await engine.generate(ask(seed=chosen.seed))
    assert first.images[0].data == again.images[0].data != other.images[0].data
    assert chosen.seed is not None and replay.images[0].data == chosen.images[0].data


async def test_concurrent_compatible_requests_run_as_one_batch() -> None:
    async with running_engine(local_settings(batch_window_ms=200, max_batch_size=8)) as engine:
        results = await asyncio.gather(*(engine.generate(ask(f"prompt {i}", seed=i)) for i in range(6)))
        stats = engine.stats()
    assert [result.seed for result in results] == list(range(6))
    assert stats.batch_sizes == {6: 1}, stats
    assert stats.images_generated == 6 and stats.batches == 1


async def test_requests_that_differ_in_size_or_steps_do_not_share_a_batch() -> None:
    async with running_engine(local_settings(batch_window_ms=100)) as engine:
        await asyncio.gather(
            engine.generate(ask(width=64)), engine.generate(ask(width=128)), engine.generate(ask(steps=1))
        )
        stats = engine.stats()
    assert stats.batch_sizes == {1: 3}


async def test_requests_arriving_while_the_device_is_busy_batch_together() -> None:
    async with running_engine(local_settings(batch_window_ms=0, max_batch_size=4)) as engine:
        with held_device(engine) as hold:
            first = asyncio.create_task(engine.generate(ask(seed=1)))
            await hold.wait_started()
            waiting = [asyncio.create_task(engine.generate(ask(seed=10 + i))) for i in range(5)]
            await asyncio.sleep(0.05)
            assert engine.stats().queue_depth == 5
            hold.release()
            await asyncio.gather(first, *waiting)
        stats = engine.stats()
    assert stats.batch_sizes == {1: 2, 4: 1}, stats  # the busy one, then 4 of the 5 waiting, then the last


async def test_the_pixel_budget_batches_small_images_widely_and_large_ones_alone() -> None:
    settings = local_settings(batch_window_ms=0, max_batch_size=8)
    settings.models["tiny"] = msgspec.convert(
        {"path": "builtin:tiny-sd", "batch_pixels": 2 * 64 * 64}, LocalModelSettings
    )
    async with running_engine(settings) as engine:
        with held_device(engine) as hold:
            first = asyncio.create_task(engine.generate(ask(seed=1)))
            await hold.wait_started()
            small = [asyncio.create_task(engine.generate(ask(seed=10 + i))) for i in range(5)]
            large = [asyncio.create_task(engine.generate(ask(seed=20 + i, width=128, height=128))) for i in range(2)]
            await asyncio.sleep(0.05)
            hold.release()
            await asyncio.gather(first, *small, *large)
        stats = engine.stats()
    # The busy one; the five small ones in calls of two (the budget), then the two large ones one by one.
    assert stats.batch_sizes == {1: 4, 2: 2}, stats


async def test_a_batched_image_is_the_image_drawn_alone() -> None:
    """Seeded requests drawn in one batch get what each gets alone (float rounding aside), negatives mixed."""
    requests = [
        sdxl("a red fox", seed=3),
        sdxl("a blue bird", seed=4, negative_prompt="blur"),
        sdxl("a red fox", seed=5, n=2),
        sdxl("green", seed=6, negative_prompt="dark"),
    ]
    settings = local_settings({"tiny-sdxl": "builtin:tiny-sdxl"}, batch_window_ms=0, max_batch_size=8)
    async with running_engine(settings) as engine:
        with held_device(engine, "tiny-sdxl") as hold:
            first = asyncio.create_task(engine.generate(sdxl(seed=1)))
            await hold.wait_started()
            waiting = [asyncio.create_task(engine.generate(request)) for request in requests]
            await asyncio.sleep(0.05)
            hold.release()
            await first
            batched = await asyncio.gather(*waiting)
        assert engine.stats().batch_sizes == {1: 1, 2: 1, 3: 1}  # no negative prompt (3 images), and with one (2)
        alone = [await engine.generate(request) for request in requests]
    for together, by_itself in zip(batched, alone, strict=True):
        for a, b in zip(together.images, by_itself.images, strict=True):
            assert worst_difference(a.data, b.data) <= 2


def sdxl(prompt: str = "a lighthouse", **fields: object) -> ImageRequest:
    return ImageRequest(model="tiny-sdxl", prompt=prompt, **fields)  # type: ignore[arg-type]


def worst_difference(a: bytes, b: bytes) -> int:
    first, second = (Image.open(io.BytesIO(data)).convert("RGB").tobytes() for data in (a, b))
    return max(abs(x - y) for x, y in zip(first, second, strict=True))


async def test_a_full_queue_answers_overloaded_at_once() -> None:
    async with running_engine(local_settings(queue_size=2)) as engine:
        with held_device(engine) as hold:
            running = asyncio.create_task(engine.generate(ask()))
            await hold.wait_started()
            queued = [asyncio.create_task(engine.generate(ask(width=128))) for _ in range(2)]
            await asyncio.sleep(0.01)
            # Refused while the device is still held: it does not wait for room (a wait would never end here).
            with pytest.raises(GatewayError) as caught:
                async with asyncio.timeout(5):
                    await engine.generate(ask())
            hold.release()
            await asyncio.gather(running, *queued)
        stats = engine.stats()
    assert caught.value.code is ErrorCode.OVERLOADED and caught.value.status == 503
    assert caught.value.reason is FailureReason.LOAD_SHED and not caught.value.counts_toward_cooldown
    assert caught.value.retry_after is not None and caught.value.retry_after >= 1.0
    assert stats.requests_refused == 1 and stats.images_generated == 3


async def test_a_cancelled_request_is_dropped_and_never_drawn() -> None:
    async with running_engine(local_settings()) as engine:
        with held_device(engine) as hold:
            running = asyncio.create_task(engine.generate(ask()))
            await hold.wait_started()
            abandoned = asyncio.create_task(engine.generate(ask(width=128, n=3)))
            await asyncio.sleep(0.01)
            assert engine.stats().queue_depth == 1
            abandoned.cancel()  # the client went away
            await asyncio.gather(abandoned, return_exceptions=True)
            assert engine.stats().queue_depth == 0
            hold.release()
            await running
        await asyncio.sleep(0.05)
        stats = engine.stats()
    assert stats.requests_dropped == 1
    assert stats.images_generated == 1 and stats.batch_sizes == {1: 1}


async def test_a_timeout_while_queued_drops_the_request_too() -> None:
    async with running_engine(local_settings()) as engine:
        with held_device(engine) as hold:
            running = asyncio.create_task(engine.generate(ask()))
            await hold.wait_started()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(engine.generate(ask(width=128)), 0.05)
            hold.release()
            await running
        assert engine.stats().requests_dropped == 1 and engine.stats().images_generated == 1


async def test_a_missing_model_is_unavailable_without_its_path(tmp_path: Path) -> None:
    """The operator reads where the weights were looked for (log, stats); a client gets a 503 naming no path."""
    nowhere = tmp_path / "no-such-model"
    async with running_engine(local_settings({"tiny": TINY["tiny"], "gone": str(nowhere)})) as engine:
        assert engine.ready and engine.stats().models["tiny"] == "ready"  # one model serves: ready
        assert not engine.healthy  # but not every configured model: not healthy
        assert str(nowhere) in engine.stats().models["gone"]
        with pytest.raises(GatewayError) as caught:
            await engine.generate(ImageRequest(model="gone", prompt="x"))
        served = await engine.generate(ask())  # the other model still serves
    assert caught.value.status == 503 and caught.value.reason is FailureReason.MODEL_UNAVAILABLE
    assert caught.value.retryable and not caught.value.counts_toward_cooldown
    assert str(tmp_path) not in caught.value.message and "/" not in caught.value.message
    assert served.images


async def test_an_unconfigured_model_is_model_not_found_listing_the_served_ones() -> None:
    async with running_engine(local_settings()) as engine:
        with pytest.raises(GatewayError) as caught:
            await engine.generate(ImageRequest(model="dall-e-3", prompt="x"))
    assert caught.value.code is ErrorCode.MODEL_NOT_FOUND and "(tiny)" in caught.value.message


async def test_a_bad_size_is_refused_before_it_queues() -> None:
    async with running_engine(local_settings()) as engine:
        with pytest.raises(GatewayError) as caught:
            await engine.generate(ask(width=100, height=64))
        assert engine.stats().queue_depth == 0 and engine.stats().batches == 0
    assert caught.value.code is ErrorCode.INVALID_SIZE and "multiples of 8" in caught.value.message


async def test_edit_with_mask_and_variation() -> None:
    async with running_engine(local_settings()) as engine:
        edit = await engine.generate(
            ask("a hat", operation=Operation.EDIT, images=(png(96, 64),), mask=png(96, 64), n=2, seed=3)
        )
        variation = await engine.generate(ask("", operation=Operation.VARIATION, images=(png(64, 64),)))
    assert [(image.width, image.height) for image in edit.images] == [(96, 64), (96, 64)]  # the input's size
    assert [image.seed for image in edit.images] == [3, 4]
    assert variation.images[0].data is not None and image_dimensions(variation.images[0].data) == (64, 64)


async def test_an_unreadable_input_image_fails_only_its_request() -> None:
    """A truncated PNG's header is whole: it queues, and its decode on the device fails as the client's 400."""
    async with running_engine(local_settings()) as engine:
        for image, mask in ((truncated_png(), None), (png(64, 64), truncated_png())):
            bad = ask("x", operation=Operation.EDIT, images=(image,), mask=mask, width=64, height=64)
            with pytest.raises(GatewayError) as caught:
                await engine.generate(bad)
            assert caught.value.code is ErrorCode.INVALID_REQUEST, caught.value
            assert caught.value.param == ("image" if mask is None else "mask")
        assert (await engine.generate(ask())).images


@pytest.mark.parametrize("image", [bomb_png(), zero_png(), huge_valid_png()], ids=["bomb", "0x0", "12000x12000"])
async def test_an_input_image_over_the_pixel_bound_is_refused_before_it_queues(image: bytes) -> None:
    async with running_engine(local_settings()) as engine:
        for operation in (Operation.EDIT, Operation.VARIATION):
            with pytest.raises(GatewayError) as caught:
                await engine.generate(ask("x", operation=operation, images=(image,)))
            assert caught.value.code is ErrorCode.INVALID_REQUEST and caught.value.param == "image"
        assert engine.stats().batches == 0 and engine.stats().requests_refused == 0


@pytest.mark.parametrize("model", ["tiny-sdxl", "tiny-flux"])
async def test_sdxl_and_flux_serve_every_operation(model: str) -> None:
    async with running_engine(local_settings({model: TINY[model]})) as engine:
        made = await engine.generate(ImageRequest(model=model, prompt="x", seed=1, width=64, height=96))
        assert made.images[0].data is not None
        edited = await engine.generate(
            ImageRequest(
                model=model, prompt="y", operation=Operation.EDIT, images=(made.images[0].data,), mask=png(64, 96)
            )
        )
    assert (edited.images[0].width, edited.images[0].height) == (64, 96)


async def test_jpeg_when_asked() -> None:
    async with running_engine(local_settings()) as engine:
        result = await engine.generate(ask(output_format="jpeg"))
    assert result.images[0].media_type == "image/jpeg" and result.images[0].data[:3] == b"\xff\xd8\xff"  # type: ignore[index]


async def test_closing_finishes_the_batch_on_the_device_and_answers_the_waiting() -> None:
    engine = LocalEngine(local_settings())
    await engine.start()
    with held_device(engine) as hold:
        running = asyncio.create_task(engine.generate(ask()))
        await hold.wait_started()
        waiting = asyncio.create_task(engine.generate(ask(width=128)))
        await asyncio.sleep(0.01)
        hold.release()
        await engine.aclose()
    with pytest.raises(GatewayError) as caught:
        await waiting
    assert caught.value.code is ErrorCode.OVERLOADED
    assert (await running).images  # the batch that had started was finished and answered
    with pytest.raises(GatewayError, match="shutting down"):
        await engine.generate(ask())


class Recorder:
    """An ``EngineObserver`` that keeps what it was told."""

    def __init__(self) -> None:
        self.depths: list[tuple[str, int]] = []
        self.batches: list[tuple[str, int]] = []

    def queue_depth(self, model: str, depth: int) -> None:
        self.depths.append((model, depth))

    def batch_drawn(self, model: str, images: int, seconds: float) -> None:
        assert seconds > 0
        self.batches.append((model, images))


async def test_the_observer_hears_queue_depth_and_each_pipeline_call() -> None:
    recorder = Recorder()
    engine = LocalEngine(local_settings(batch_window_ms=100, max_batch_size=2), observer=recorder)
    await engine.start()
    try:
        await asyncio.gather(*(engine.generate(ask(seed=i)) for i in range(3)))
    finally:
        await engine.aclose()
    assert sorted(recorder.batches) == [("tiny", 1), ("tiny", 2)]
    assert ("tiny", 3) in recorder.depths and recorder.depths[-1] == ("tiny", 0)


async def test_an_engine_with_no_loadable_model_is_not_ready(tmp_path: Path) -> None:
    async with running_engine(local_settings({"gone": str(tmp_path / "none")})) as engine:
        assert not engine.ready
        assert "no directory" in engine.stats().models["gone"]


async def test_a_lone_request_at_an_idle_device_starts_without_the_window() -> None:
    # An hour's window: a lone request held by it would never be answered within the test.
    async with running_engine(local_settings(batch_window_ms=3_600_000)) as engine:
        for seed in (1, 2):
            await asyncio.wait_for(engine.generate(ask(seed=seed)), 60)
        stats = engine.stats()
    assert (stats.batches_at_once, stats.batches_held, stats.batch_sizes) == (2, 0, {1: 2})


async def test_requests_arriving_while_the_device_is_busy_hold_for_companions() -> None:
    async with running_engine(local_settings(batch_window_ms=50, max_batch_size=8)) as engine:
        with held_device(engine) as hold:
            first = asyncio.create_task(engine.generate(ask(seed=1)))
            await hold.wait_started()
            waiting = [asyncio.create_task(engine.generate(ask(seed=10 + i))) for i in range(3)]
            await asyncio.sleep(0)
            hold.release()
            await asyncio.gather(first, *waiting)
        stats = engine.stats()
    assert stats.batch_sizes == {1: 1, 3: 1}, stats
    assert (stats.batches_at_once, stats.batches_held) == (1, 1)  # the first at an idle device; then the window


async def test_jpeg_and_webp_are_drawn_in_that_format_at_the_asked_compression() -> None:
    async with running_engine(local_settings()) as engine:
        results = {
            (fmt, compression): await engine.generate(
                ask(seed=5, width=64, height=64, output_format=fmt, output_compression=compression)
            )
            for fmt in ("jpeg", "webp")
            for compression in (10, 95)
        }
    for (fmt, _), result in results.items():
        image = result.images[0]
        assert image.data is not None and image.media_type == f"image/{fmt}"
        assert Image.open(io.BytesIO(image.data)).format == fmt.upper()
    for fmt in ("jpeg", "webp"):
        low, high = results[fmt, 10].images[0].data, results[fmt, 95].images[0].data
        assert low is not None and high is not None and len(low) < len(high)
