"""Progress and streamed previews from the real tiny pipelines: every step, previews per request of a batch."""

from __future__ import annotations

import asyncio

import pytest
import torch

from local_backend.pipelines import load_model
from local_backend.previews import Reporter, latents_to_rgb, preview_steps
from local_backend.rules import Work
from schemas.canonical import ImageRequest, Operation, Progress
from schemas.dialect import image_dimensions
from schemas.local import LocalModelSettings
from tests.local_backend.engines import TINY, local_settings, running_engine


@pytest.mark.parametrize(
    ("steps", "count", "expected"),
    [(2, 2, [1, 2]), (3, 3, [1, 2, 3]), (30, 3, [8, 15, 23]), (30, 1, [15]), (4, 2, [2, 3]), (5, 0, []), (1, 3, [1])],
)
def test_preview_steps_are_evenly_spaced_before_the_end(steps: int, count: int, expected: list[int]) -> None:
    assert preview_steps(steps, count) == expected


def test_latents_to_rgb() -> None:
    grey = latents_to_rgb(torch.zeros(4, 8, 16))  # the SD map of zero latents is mid grey
    assert grey.shape == (8, 16, 3) and grey.dtype.name == "uint8"
    assert (grey == 128).all()
    wide = latents_to_rgb(torch.randn(16, 4, 4, generator=torch.Generator().manual_seed(1)))
    assert wide.shape == (4, 4, 3) and wide.min() == 0 and wide.max() == 255  # first three channels, stretched


class Heard:
    """What one request's progress callback heard, in order."""

    def __init__(self) -> None:
        self.reports: list[Progress] = []

    def __call__(self, progress: Progress) -> None:
        asyncio.get_running_loop()  # called on the event loop, never from the device thread
        self.reports.append(progress)

    @property
    def steps(self) -> list[tuple[int, int]]:
        return [(report.step, report.steps) for report in self.reports if report.preview is None]

    @property
    def previews(self) -> list[Progress]:
        return [report for report in self.reports if report.preview is not None]


def ask(prompt: str, **fields: object) -> ImageRequest:
    return ImageRequest(model="tiny", prompt=prompt, width=64, height=64, **fields)  # type: ignore[arg-type]


async def test_each_request_of_a_batch_gets_every_step_and_its_own_previews() -> None:
    async with running_engine(local_settings(batch_window_ms=300)) as engine:
        first, second, quiet = Heard(), Heard(), Heard()
        results = await asyncio.gather(
            engine.generate(ask("a red boat", seed=1, steps=4, stream=True, partial_images=2), first),
            engine.generate(ask("a green hill", seed=2, steps=4, stream=True, partial_images=1), second),
            engine.generate(ask("no previews asked", seed=3, steps=4, partial_images=2), quiet),  # not a stream
        )
        assert engine.stats().batch_sizes == {3: 1}  # one pipeline call drew all three
    for heard in (first, second, quiet):
        assert heard.steps == [(step, 4) for step in range(1, 5)]
    assert [(p.step, p.index) for p in first.previews] == [(2, 0), (3, 1)]
    assert [(p.step, p.index) for p in second.previews] == [(2, 0)]
    assert quiet.previews == []
    pictures = []
    for heard in (first, second):
        for report in heard.previews:
            assert report.preview is not None and report.preview.data is not None
            assert report.preview.media_type == "image/png"
            assert image_dimensions(report.preview.data) == (64, 64)
            pictures.append(report.preview.data)
    # each request previews its own row of the batch latents: different seeds, different pictures
    assert pictures[0] != pictures[2]
    for result in results:
        assert result.images[0].data is not None


async def test_previews_of_an_edit_and_of_flux() -> None:
    settings = local_settings({"tiny": TINY["tiny"], "tiny-flux": TINY["tiny-flux"]})
    async with running_engine(settings) as engine:
        drawn = await engine.generate(ask("base", seed=5))
        assert drawn.images[0].data is not None
        edit, flux = Heard(), Heard()
        image = drawn.images[0].data
        edit_request = ask("a hat", operation=Operation.EDIT, images=(image,), stream=True, partial_images=1)
        await engine.generate(edit_request, edit)
        flux_request = ImageRequest(
            model="tiny-flux", prompt="a city", width=64, height=64, steps=3, stream=True, partial_images=1
        )
        await engine.generate(flux_request, flux)
    # image-to-image runs fewer steps than asked; the reports count the steps it really runs
    total = edit.steps[-1][1]
    assert edit.steps == [(step, total) for step in range(1, total + 1)]
    assert len(edit.previews) == 1
    assert [report.step for report in flux.previews] == [2]
    preview = flux.previews[0].preview
    assert preview is not None and preview.data is not None and image_dimensions(preview.data) == (64, 64)


async def test_a_call_whose_callers_all_left_stops_denoising() -> None:
    """A pipeline call holding only requests whose callers went away skips its remaining steps."""
    model = load_model("tiny", LocalModelSettings(path="builtin:tiny-sd"), "cpu", torch.float32)
    loop = asyncio.get_running_loop()
    gone, staying = Heard(), Heard()
    left = Reporter(loop, gone, 0, (64, 64))
    left.cancelled = True
    stays = Reporter(loop, staying, 0, (64, 64))
    request = Work(model="tiny", operation=Operation.GENERATE, prompt="a fox", negative_prompt=None, n=1,
                   width=64, height=64, steps=6, guidance=2.0, seed=3, strength=0.8)  # fmt: skip
    await asyncio.to_thread(model.draw, [request], 4, [left])
    await asyncio.to_thread(model.draw, [request, request], 4, [left, stays])  # someone still waits: all steps
    await asyncio.sleep(0)  # the reports scheduled on the loop
    await asyncio.sleep(0.05)
    assert staying.steps == [(step, 6) for step in range(1, 7)]
    assert gone.steps == [(step, 6) for step in range(1, 7)]  # only from the second call: the first stopped
