"""``make bench-local``: what the local backend's serving layer costs and what batching buys.

Images per second through the engine at concurrency 1, 4 and 16, against a bare loop of
pipeline calls on the same loaded pipeline in the same process, and the batch sizes the
engine formed. Always on the CPU with the tiny model (noise, milliseconds an image);
also, when torch sees a GPU, with a model of real size (SDXL's architecture, built from
its config with random weights: no download) in bf16. The table is printed, and the
measured parts of the "Local backend" section of ``docs/benchmarks.md`` are rewritten
with the machine and the date, and the CPU part's row of "Today's figures" at the top of the
file (between ``<!-- local-backend-headline:start -->`` and its end marker).

    python -m bench.local [--images 64] [--no-write] [--gpu-only | --cpu-only]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec

from schemas.local import LocalBackendSettings

__all__ = ["main"]

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
SECTION = "## Local backend"
# The section lives between these markers, so other tools can rewrite theirs around it.
START, END = "<!-- local-backend:start -->", "<!-- local-backend:end -->"
# Its row of "Today's figures", at the top of the file.
HEADLINE_START, HEADLINE_END = "<!-- local-backend-headline:start -->", "<!-- local-backend-headline:end -->"
CONCURRENCY = (1, 4, 16)
CPU_PART, GPU_PART = "### CPU, tiny model", "### GPU, real-size model"
GPU_NOT_MEASURED = (
    "Not measured yet: no GPU was lent when this was last run. On a machine where torch sees\n"
    "CUDA, `make bench-local` builds a real-size SDXL (its architecture from its config, random\n"
    "weights, no download) into `var/models/random-sdxl`, loads it in bf16 through the same\n"
    "loader as real weights, and fills this part in.\n"
)


class Setup(msgspec.Struct, kw_only=True):
    """One benchmarked configuration: which model on which device, at what size."""

    title: str
    path: str
    device: str
    size: int
    steps: int
    images: int
    dtype: str = "bfloat16"
    max_batch_size: int = 4
    batch_window_ms: float = 10.0


class Row(msgspec.Struct, kw_only=True):
    path: str
    concurrency: int
    images_per_s: float
    p50_ms: float | None = None
    p95_ms: float | None = None
    batch_sizes: dict[int, int] = {}


class Measured(msgspec.Struct, kw_only=True):
    setup: Setup
    repeats: int
    rows: list[Row]
    # At concurrency 1: the median request's latency, and the mean time an image, over the bare loop's call.
    overhead_ms: float
    overhead_percent: float
    mean_overhead_ms: float
    machine: str
    # At the highest concurrency: how much less the engine draws than the bare loop in calls of max_batch_size.
    busy_overhead_percent: float = 0.0
    when: str = ""  # UTC, to the minute


# --- the measurements ---


def bare_loop(model: Any, setup: Setup, batch: int) -> Row:
    """The pipeline alone: ``setup.images`` images in calls of ``batch``, one after another, no engine."""
    import torch

    pipeline, calls = model.text_to_image, max(1, setup.images // batch)
    extra = model.family_arguments([None] * batch)
    started = time.perf_counter()
    for call in range(calls):
        pipeline(
            prompt=[f"bare {call} {index}" for index in range(batch)],
            height=setup.size,
            width=setup.size,
            num_inference_steps=setup.steps,
            guidance_scale=model.rules.default_guidance,
            generator=[torch.Generator("cpu").manual_seed(call * batch + index) for index in range(batch)],
            output_type="pil",
            **extra,
        )
    elapsed = time.perf_counter() - started
    return Row(path=f"bare pipeline loop, {batch} per call", concurrency=1, images_per_s=calls * batch / elapsed)


async def through_engine(engine: Any, setup: Setup, concurrency: int) -> Row:
    """``concurrency`` clients asking one image at a time until ``setup.images`` are drawn."""
    from schemas.canonical import ImageRequest

    before = Counter(engine.stats().batch_sizes)
    latencies: list[float] = []
    remaining = [setup.images]

    async def client(index: int) -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            request = ImageRequest(model="bench", prompt=f"client {index}", width=setup.size, height=setup.size)
            started = time.perf_counter()
            await engine.generate(request)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client(index) for index in range(concurrency)))
    elapsed = time.perf_counter() - started
    seen = Counter(engine.stats().batch_sizes)
    seen.subtract(before)
    latencies.sort()
    return Row(
        path="engine",
        concurrency=concurrency,
        images_per_s=len(latencies) / elapsed,
        p50_ms=1000 * statistics.median(latencies),
        p95_ms=1000 * latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
        batch_sizes={size: count for size, count in sorted(seen.items()) if count > 0},
    )


def median(runs: list[Row]) -> Row:
    """The run with the median throughput (this machine may be shared: one slow run should not decide)."""
    return sorted(runs, key=lambda row: row.images_per_s)[len(runs) // 2]


async def measure(setup: Setup, repeats: int = 3) -> Measured:
    from local_backend.engine import LocalEngine

    raw = {
        "kind": "local",
        "device": setup.device,
        "dtype": setup.dtype,
        "queue_size": 256,
        "max_batch_size": setup.max_batch_size,
        "batch_window_ms": setup.batch_window_ms,
        "models": {"bench": {"path": setup.path, "default_steps": setup.steps, "max_pixels": setup.size**2}},
    }
    engine = LocalEngine(msgspec.convert(raw, LocalBackendSettings), name="bench")
    await engine.start()
    try:
        model = engine.models["bench"]
        # The bare loop runs on the engine's device thread too: torch's CPU thread pool belongs to
        # the thread that calls it, and two pools spinning on two cores would slow both down.
        warm_up = msgspec.structs.replace(setup, images=2)
        for batch in range(1, setup.max_batch_size + 1):
            await engine.run_on_device(bare_loop, model, warm_up, batch)  # every shape, once before timing
        for concurrency in (1, setup.max_batch_size):
            await through_engine(engine, msgspec.structs.replace(setup, images=2 * setup.max_batch_size), concurrency)
        # Rounds interleave the bare loop and the engine, so a machine that slows down (shared, thermal)
        # slows both; each row is the median of its runs.
        runs: list[list[Row]] = [[] for _ in range(2 + len(CONCURRENCY))]
        for _ in range(repeats):
            for index, batch in enumerate((1, setup.max_batch_size)):
                runs[index].append(await engine.run_on_device(bare_loop, model, setup, batch))
            for index, concurrency in enumerate(CONCURRENCY, start=2):
                runs[index].append(await through_engine(engine, setup, concurrency))
        rows = [median(row_runs) for row_runs in runs]
    finally:
        await engine.aclose()
    bare_ms = 1000 / rows[0].images_per_s
    served = rows[2]
    assert served.p50_ms is not None
    return Measured(
        setup=setup,
        repeats=repeats,
        rows=rows,
        overhead_ms=served.p50_ms - bare_ms,
        overhead_percent=100 * (served.p50_ms - bare_ms) / bare_ms,
        mean_overhead_ms=1000 / served.images_per_s - bare_ms,
        machine=describe_machine(setup.device),
        busy_overhead_percent=100 * (rows[1].images_per_s - rows[-1].images_per_s) / rows[1].images_per_s,
        when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )


# --- a real-size model, from its config, with random weights ---


def build_random_sdxl() -> Any:
    """Stable Diffusion XL 1.0's architecture (configs as published), random weights, in bf16 on the GPU."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from local_backend.tiny import clip_tokenizer

    tokenizer = clip_tokenizer()  # a byte-level vocabulary: the weights are random, the text does not matter
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": 1}
    # Built in float32 on the GPU (random initialisation is fast there), then kept in bf16.
    with torch.device("cuda"):
        unet = UNet2DConditionModel(
            sample_size=128,
            block_out_channels=(320, 640, 1280),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(5, 10, 20),
            transformer_layers_per_block=(1, 2, 10),
            cross_attention_dim=2048,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            sample_size=1024,
            scaling_factor=0.13025,
            force_upcast=False,  # bf16 keeps the range the fp16 VAE loses
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                projection_dim=768,
                vocab_size=49408,
                hidden_act="quick_gelu",
                **ids,
            )
        )
        text_encoder_2 = CLIPTextModelWithProjection(
            CLIPTextConfig(
                hidden_size=1280,
                intermediate_size=5120,
                num_hidden_layers=32,
                num_attention_heads=20,
                projection_dim=1280,
                vocab_size=49408,
                hidden_act="gelu",
                **ids,
            )
        )
    modules: list[Any] = [unet, vae, text_encoder, text_encoder_2]
    for module in modules:
        module.to(torch.bfloat16)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
    )


def gpu_setup(images: int) -> Setup:
    from local_backend.tiny import ensure_built

    directory = ensure_built("random-sdxl", build_random_sdxl)
    return Setup(
        title="GPU: SDXL-size UNet, VAE and text encoders, random weights, bf16",
        path=str(directory),
        device="cuda",
        size=1024,
        steps=20,
        images=min(images, 32),
    )


def cpu_setup(images: int, size: int = 64) -> Setup:
    return Setup(
        title="CPU: the built-in tiny model (tiny-sd: random weights, draws noise), float32",
        path="builtin:tiny-sd",
        device="cpu",
        size=size,
        steps=2,
        images=images,
    )


# --- the report ---


def describe_machine(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        where = f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    else:
        where = (
            f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads"
        )
    today = datetime.date.today().isoformat()
    load = f"load average {os.getloadavg()[0]:.2f} at the start (the machine may be shared)"
    return f"{where}; Python {platform.python_version()}, {platform.system()} {platform.machine()}; {today}; {load}"


def cpu_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return platform.processor() or "unknown CPU"
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else platform.processor() or "unknown CPU"


def render(measured: Measured) -> str:
    setup = measured.setup
    lines = [
        f"{setup.title}; {setup.size}x{setup.size}, {setup.steps} steps, {setup.images} images a run,",
        f"the median of {measured.repeats} runs a row;",
        f"`max_batch_size` {setup.max_batch_size}, `batch_window_ms` {setup.batch_window_ms:g}.",
        f"Machine: {measured.machine}.",
        "",
        "| path | concurrency | images/s | p50 latency (ms) | p95 latency (ms) | batch sizes seen (images: calls) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in measured.rows:
        p50 = f"{row.p50_ms:.1f}" if row.p50_ms is not None else ""
        p95 = f"{row.p95_ms:.1f}" if row.p95_ms is not None else ""
        sizes = ", ".join(f"{size}: {count}" for size, count in row.batch_sizes.items())
        lines.append(f"| {row.path} | {row.concurrency} | {row.images_per_s:.1f} | {p50} | {p95} | {sizes} |")
    lines += [
        "",
        f"Serving overhead at concurrency 1, the median request against the bare loop's call: "
        f"{measured.overhead_ms:.1f} ms an image ({measured.overhead_percent:.0f} %); "
        f"{measured.mean_overhead_ms:.1f} ms by the mean (which also counts the slow outliers of a shared machine). "
        "A lone request at an idle device does not wait the batch window; what is left is the queue, the "
        "hand-over to the device thread and PNG encoding (the bare loop encodes nothing).",
        "",
        f"At concurrency {measured.rows[-1].concurrency}, the engine draws "
        f"{measured.busy_overhead_percent:.1f} % fewer images a second than the bare loop in calls of "
        f"{setup.max_batch_size} (negative: more).",
        "",
    ]
    return "\n".join(lines)


def headline(measured: Measured, command: str) -> str:
    """The run in one row of "Today's figures": date, machine, command and transport first, then the figures."""
    setup, rows = measured.setup, measured.rows
    where, load = measured.machine.split(";")[0], measured.machine.rsplit("; ", 1)[-1]
    engine = [row for row in rows if row.path == "engine"]
    cells = [
        measured.when,
        f"{where}; {load}",
        f"`{command}`",
        "none (in process)",
        f"{setup.size}x{setup.size}, {setup.steps} steps",
        f"{engine[0].images_per_s:.1f} / {engine[-1].images_per_s:.1f}",
        f"{rows[0].images_per_s:.1f} / {rows[1].images_per_s:.1f}",
        f"{measured.overhead_percent:+.0f}% ({measured.overhead_ms:+.1f} ms)",
        f"{measured.busy_overhead_percent:+.1f}%",
    ]
    columns = [
        "date", "machine", "command", "default transport", "images",
        f"images/s through the engine at concurrency {engine[0].concurrency} / {engine[-1].concurrency}",
        f"bare loop, images/s in calls of 1 / {setup.max_batch_size}",
        f"overhead at concurrency {engine[0].concurrency} (median request)",
        f"overhead at concurrency {engine[-1].concurrency} (against calls of {setup.max_batch_size})",
    ]  # fmt: skip
    return "\n".join(
        ["| " + " | ".join(columns) + " |", "|---|---|---|---|---|" + "---:|" * 4, "| " + " | ".join(cells) + " |"]
    )


def write_doc(parts: dict[str, str], path: Path = DOC, top: str | None = None) -> None:
    """Rewrite the measured parts of the "Local backend" section (between its markers); the rest stays as it is.

    ``top`` (the `headline`) replaces the row of "Today's figures", where the file has its markers."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    match = re.search(rf"{re.escape(START)}\n.*?{re.escape(END)}\n?", text, re.DOTALL)
    old = match.group(0) if match else ""
    current = {CPU_PART: _part(old, CPU_PART), GPU_PART: _part(old, GPU_PART) or GPU_NOT_MEASURED, **parts}
    section = (
        f"{START}\n{SECTION}\n\n"
        "`make bench-local` (`python -m bench.local`): images per second through the local engine at\n"
        "concurrency 1, 4 and 16 against a bare loop of pipeline calls on the same pipeline in the same\n"
        "process, and the batch sizes the engine formed. Each part below is rewritten when it is measured.\n\n"
        f"{CPU_PART}\n\n{current[CPU_PART].strip()}\n\n{GPU_PART}\n\n{current[GPU_PART].strip()}\n{END}\n"
    )
    if match is None:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        text = text[: match.start()] + section + text[match.end() :]
    if top is not None and HEADLINE_START in text and HEADLINE_END in text:
        head, rest = text.split(HEADLINE_START, 1)
        text = f"{head}{HEADLINE_START}\n{top.rstrip()}\n{HEADLINE_END}{rest.split(HEADLINE_END, 1)[1]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _part(section: str, heading: str) -> str:
    """The text under ``heading`` (a ``### `` part) in ``section``; empty when it has none."""
    match = re.search(rf"^{re.escape(heading)}\n(.*?)(?=^### |^{re.escape(END)}|\Z)", section, re.MULTILINE | re.DOTALL)
    return match.group(1).strip() + "\n" if match else ""


# --- the command ---


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.local", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64, help="images per measured run (default 64)")
    parser.add_argument("--size", type=int, default=64, help="side of the CPU part's images in pixels (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row; the median is reported (default 3)")
    parser.add_argument("--no-write", action="store_true", help=f"print only; leave {DOC.name} as it is")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--cpu-only", action="store_true", help="skip the GPU part even where there is a GPU")
    only.add_argument("--gpu-only", action="store_true", help="skip the CPU part")
    args = parser.parse_args(argv)

    import torch

    setups = [] if args.gpu_only else [(CPU_PART, cpu_setup(args.images, args.size))]
    if not args.cpu_only and torch.cuda.is_available():
        setups.append((GPU_PART, gpu_setup(args.images)))
    elif args.gpu_only:
        print("no GPU: torch sees no CUDA device")
        return 1
    parts, top = {}, None
    command = " ".join(["python -m bench.local", *(sys.argv[1:] if argv is None else argv)])
    for heading, setup in setups:
        measured = asyncio.run(measure(setup, args.repeats))
        parts[heading] = render(measured)
        print(f"{heading}\n\n{parts[heading]}")
        if heading == CPU_PART:
            top = headline(measured, command)
    if not args.no_write:
        write_doc(parts, top=top)
        print(f"written to {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
