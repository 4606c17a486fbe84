"""What each speed option of a local model buys, and the pixel budget per batch to configure.

    python -m bench.speed [--path builtin:tiny-flux] [--device auto] [--dtype bfloat16]
                          [--size 512] [--steps 8] [--sizes 256,512,1024] [--max-batch 8] [--repeats 3]

Two tables, printed as markdown (paste them into docs/benchmarks.md by hand):

- **Options**: each option the model's family supports (docs/local_backend.md, "Speed
  options"), alone, against the exact default: seconds an image (median of ``--repeats``
  draws at ``--size``, after a warm-up that also compiles), evaluations of the denoiser's
  last block per image (counted through a hook, so a step cache's skipping is counted, not
  inferred from time) and the PSNR of its image against the exact one, same seed.
- **Batching**: images per second at each size of ``--sizes`` for pipeline calls of 1, 2, 4 …
  ``--max-batch`` images, and the knee: the smallest batch within 10% of that size's best.
  The suggested ``batch_pixels`` is the largest size's knee times its pixels: the model's
  largest images batch as far as it pays, smaller ones further (``max_batch_size`` caps).

On a GPU run it with the real model (``--path /models/...``); on the CPU the tiny models'
figures show the method works, not what a GPU would gain.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
import torch

from local_backend.pipelines import LoadedModel, denoiser, load_model, pick_device, pick_dtype
from local_backend.rules import Work
from schemas.canonical import Operation
from schemas.local import CACHE_FAMILIES, LocalModelSettings

__all__ = ["OptionRow", "batch_sweep", "main", "option_rows", "render"]

KNEE = 0.9  # a batch within this share of the best images/s is as good as the best
CACHE_THRESHOLDS = (0.05, 0.1, 0.2, 0.3)


class OptionRow(msgspec.Struct, kw_only=True):
    option: str
    seconds_per_image: float
    # None where a hook cannot see them: inside compiled blocks (compilation changes no count).
    tail_evaluations: int | None
    psnr_db: float


class BatchRow(msgspec.Struct, kw_only=True):
    size: int
    batch: int
    images_per_s: float


def option_sets(family: str, compile: bool = True) -> dict[str, dict[str, Any]]:
    """Each option the family supports, alone (the exact default first); ``compile`` False leaves compilation out."""
    sets: dict[str, dict[str, Any]] = {"exact (default)": {}}
    if family in CACHE_FAMILIES:
        first_block = {f"first_block:{t:g}": {"kind": "first_block", "threshold": t} for t in CACHE_THRESHOLDS}
        sets |= {f"cache {label}": {"cache": cache} for label, cache in first_block.items()}
    if compile:
        sets["compile default"] = {"compile": {}}
    sets |= {"fuse_qkv": {"fuse_qkv": True}, "channels_last": {"channels_last": True}}
    return sets


def work(size: int, steps: int, n: int = 1, seed: int = 7) -> Work:
    return Work(model="bench", operation=Operation.GENERATE, prompt="a lighthouse at dusk", negative_prompt=None,
                n=n, width=size, height=size, steps=steps, guidance=3.5, seed=seed, strength=0.8)  # fmt: skip


def tail_counter(model: LoadedModel) -> Callable[[], int]:
    """How many times the denoiser's last block has run (a skipped block's inner layers never run)."""
    net = denoiser(model.text_to_image)
    if hasattr(net, "single_transformer_blocks"):
        inner = net.single_transformer_blocks[-1].proj_out
    else:
        inner = net.up_blocks[-1].resnets[-1].conv2
    seen = [0]
    inner.register_forward_pre_hook(lambda *_: seen.__setitem__(0, seen[0] + 1))
    return lambda: seen[0]


def psnr(a: Any, b: Any) -> float:
    mse = float(((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def _load(path: str, device: str, dtype: torch.dtype, **options: Any) -> LoadedModel:
    return load_model("bench", msgspec.convert({"path": path, **options}, LocalModelSettings), device, dtype)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def option_rows(
    path: str, device: str, dtype: torch.dtype, size: int, steps: int, repeats: int, compile: bool = True
) -> list[OptionRow]:
    exact_image = None
    rows = []
    family = _load(path, "cpu", torch.float32).rules.family
    for label, options in option_sets(family, compile).items():
        model = _load(path, device, dtype, **options)
        one = work(size, steps)
        model.draw([one], 1)  # warm-up (compiles) at the measured size
        count = tail_counter(model)
        seconds = []
        image = None
        for _ in range(repeats):
            _sync(device)
            started = time.perf_counter()
            image = model.draw([one], 1).images[0][0]
            _sync(device)
            seconds.append(time.perf_counter() - started)
        if exact_image is None:
            exact_image = image
        rows.append(
            OptionRow(
                option=label,
                seconds_per_image=statistics.median(seconds),
                tail_evaluations=None if "compile" in options else count() // repeats,
                psnr_db=psnr(image, exact_image),
            )
        )
        del model
    return rows


def batch_sweep(
    path: str, device: str, dtype: torch.dtype, sizes: list[int], steps: int, max_batch: int, repeats: int
) -> list[BatchRow]:
    model = _load(path, device, dtype)
    rows = []
    for size in sizes:
        batch = 1
        while batch <= max_batch:
            jobs = [work(size, steps, n=batch)]
            try:
                model.draw(jobs, batch)  # warm-up at this shape
                seconds = []
                for _ in range(repeats):
                    _sync(device)
                    started = time.perf_counter()
                    model.draw(jobs, batch)
                    _sync(device)
                    seconds.append(time.perf_counter() - started)
            except torch.OutOfMemoryError:
                break  # this size's batches stop here
            rows.append(BatchRow(size=size, batch=batch, images_per_s=batch / statistics.median(seconds)))
            batch *= 2
    return rows


def knees(rows: list[BatchRow]) -> dict[int, int]:
    """Each size's smallest batch within ``KNEE`` of its best images/s."""
    found = {}
    for size in sorted({row.size for row in rows}):
        mine = [row for row in rows if row.size == size]
        best = max(row.images_per_s for row in mine)
        found[size] = min(row.batch for row in mine if row.images_per_s >= KNEE * best)
    return found


def suggested_batch_pixels(rows: list[BatchRow]) -> int:
    largest, batch = max(knees(rows).items())
    return largest * largest * batch


def render(options: list[OptionRow], batches: list[BatchRow]) -> str:
    lines = ["| option | s / image | last-block evaluations / image | PSNR vs exact (dB) |", "|---|---:|---:|---:|"]
    for row in options:
        shown = "identical" if math.isinf(row.psnr_db) else f"{row.psnr_db:.1f}"
        evaluations = "—" if row.tail_evaluations is None else str(row.tail_evaluations)
        lines.append(f"| {row.option} | {row.seconds_per_image:.3f} | {evaluations} | {shown} |")
    lines += ["", "| size | images / call | images / s |", "|---:|---:|---:|"]
    lines += [f"| {row.size} | {row.batch} | {row.images_per_s:.2f} |" for row in batches]
    knee = knees(batches)
    lines += ["", "Knee (smallest batch within 10% of the best): "
              + ", ".join(f"{size}²: {batch}" for size, batch in knee.items())
              + f". Suggested `batch_pixels`: {suggested_batch_pixels(batches)}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", default="builtin:tiny-flux")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--sizes", default="256,512,1024")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    dtype = pick_dtype(device, args.dtype)
    sizes = [int(size) for size in args.sizes.split(",")]
    started = time.perf_counter()
    options = option_rows(args.path, device, dtype, args.size, args.steps, args.repeats)
    batches = batch_sweep(args.path, device, dtype, sizes, args.steps, args.max_batch, args.repeats)
    print(f"{args.path} on {device} ({str(dtype).removeprefix('torch.')}), {args.steps} steps")
    print(render(options, batches))
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
