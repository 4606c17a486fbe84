"""What a streamed preview costs on the local backend: the latent-to-RGB approximation against a VAE decode.

Run: ``python -m bench.preview_cost`` (CPU, the built-in tiny SD model; sizes 64 and 512).
Prints the median milliseconds of each way to make one preview picture from one image's latents
(the PNG encoding, the same for both, is left out). docs/local_backend.md records the numbers.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable

import torch

from local_backend.pipelines import Pipeline
from local_backend.previews import latents_to_rgb
from local_backend.tiny import build_tiny_pipeline


def _median_ms(work: Callable[[], object], repeats: int = 20) -> float:
    work()  # warm
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _vae_decode(pipeline: Pipeline, latents: torch.Tensor) -> Callable[[], object]:
    def decode() -> object:
        with torch.inference_mode():
            image = pipeline.vae.decode(latents[None] / pipeline.vae.config.scaling_factor).sample
            return pipeline.image_processor.postprocess(image, output_type="pil")

    return decode


def main() -> None:
    torch.manual_seed(0)
    pipeline = build_tiny_pipeline("tiny-sd")
    for side in (64, 512):
        latents = torch.randn(4, side // 8, side // 8)
        approx = _median_ms(functools.partial(latents_to_rgb, latents))
        vae = _median_ms(_vae_decode(pipeline, latents))
        print(f"{side}x{side}: latent-to-RGB {approx:.3f} ms, VAE decode {vae:.2f} ms ({vae / approx:.0f}x)")


if __name__ == "__main__":
    main()
