"""Progress and partial images while a batch is drawn, reported to each request on the event loop.

A ``Reporter`` belongs to one request. The pipeline's ``callback_on_step_end`` (on the
device thread) calls ``step`` at every denoising step, and ``preview`` at the request's
evenly spaced preview steps with that request's own slice of the batch latents. A preview is
the cheap latent-to-RGB approximation (a fixed linear map of the latent channels, see
docs/local_backend.md for why not a VAE decode): made on the device, copied to the CPU as
a small uint8 array, then scaled to the request's size and encoded on a worker thread, off
the device thread; the callback runs on the event loop. ``flushed`` waits for the previews
still being encoded, so the engine hands over the final image only after them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from local_backend.images import encode_image
from schemas.canonical import GeneratedImage, Progress

__all__ = ["Reporter", "latents_to_rgb", "preview_steps"]

# Latent channels → RGB for the 4-channel VAEs of the SD family (SD 1.x/2.x, also a fair look for SDXL),
# the factors ComfyUI and A1111 use for their live previews; a latent of other channels shows its first three.
_SD_FACTORS = torch.tensor(
    [
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ]
)


def preview_steps(steps: int, count: int) -> list[int]:
    """The steps (1-based) after which to draw ``count`` previews: evenly spaced, the last before the end.

    With fewer steps than previews asked, one preview after each step (so fewer previews,
    as OpenAI allows: "the final image may be sent before the full number of partial images").
    """
    if count <= 0 or steps <= 0:
        return []
    if steps <= count:
        return list(range(1, steps + 1))
    return [math.ceil(index * steps / (count + 1)) for index in range(1, count + 1)]


def latents_to_rgb(latents: torch.Tensor) -> np.ndarray:
    """One image's latents ``(channels, h, w)`` → an ``(h, w, 3)`` uint8 picture, cheaply, on their device."""
    latents = latents.float()
    if latents.shape[0] == _SD_FACTORS.shape[0]:
        rgb = torch.einsum("chw,cr->hwr", latents, _SD_FACTORS.to(latents.device))
        rgb = (rgb + 1) / 2
    else:  # no known factors: the first three channels, stretched to the full range
        rgb = latents[:3].permute(1, 2, 0)
        low, high = rgb.amin(), rgb.amax()
        rgb = (rgb - low) / (high - low).clamp(min=1e-6)
    return (rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


class Reporter:
    """One request's progress: steps and previews from the device thread, delivered on ``loop``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        callback: Callable[[Progress], None],
        partial_images: int,
        size: tuple[int, int],
        output_format: str = "png",
    ) -> None:
        self.loop = loop
        self.callback = callback
        self.partial_images = partial_images
        self.size = size
        self.output_format = output_format
        self.previews_made = 0
        # Set on the loop when the request's caller stopped waiting: a pipeline call that holds only
        # such requests stops denoising (diffusers' ``interrupt``).
        self.cancelled = False
        self._pending: list[concurrent.futures.Future[None]] = []

    def wants_preview(self, step: int, steps: int) -> bool:
        """Whether a preview is due after ``step`` of ``steps`` (device thread)."""
        return step in preview_steps(steps, self.partial_images) and self.previews_made < self.partial_images

    def step(self, step: int, steps: int) -> None:
        """``step`` of ``steps`` done (device thread): cheap, a call scheduled on the loop."""
        self.loop.call_soon_threadsafe(self._call, Progress(step=step, steps=steps))

    def preview(self, step: int, steps: int, latents: torch.Tensor) -> None:
        """A preview from this request's latents ``(channels, h, w)`` (device thread); encoded off it."""
        index = self.previews_made
        self.previews_made += 1
        pixels = latents_to_rgb(latents)
        made = asyncio.run_coroutine_threadsafe(self._deliver(step, steps, index, pixels), self.loop)
        self._pending.append(made)

    async def _deliver(self, step: int, steps: int, index: int, pixels: np.ndarray) -> None:
        image = await asyncio.to_thread(self._encode, pixels)
        self._call(Progress(step=step, steps=steps, preview=image, index=index))

    def _encode(self, pixels: np.ndarray) -> GeneratedImage:
        picture = Image.fromarray(pixels, "RGB").resize(self.size, Image.Resampling.BILINEAR)
        data, media_type = encode_image(picture, self.output_format)
        return GeneratedImage(data=data, width=picture.width, height=picture.height, media_type=media_type)

    def _call(self, progress: Progress) -> None:
        try:
            self.callback(progress)
        except Exception:  # a callback must not raise; if it does, the drawing goes on regardless
            return

    async def flushed(self) -> None:
        """Wait for the previews still being encoded (on the loop), so that none comes after the final image."""
        if self._pending:
            await asyncio.gather(*(asyncio.wrap_future(made) for made in self._pending), return_exceptions=True)
