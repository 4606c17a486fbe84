"""``make bench-gpu``: FLUX.1-schnell and SDXL of real size on one GPU, through the engine and bare, in 8 minutes.

    python -m bench.gpu --out DIR [--budget 470] [--device cuda] [--tiny]
                        [--models flux-schnell,sdxl] [--modes plain,cache,compile,both] [--sizes 1024,512]

The pipelines are built from their published configs (``bench/published.py``) with random
weights in bf16, straight on the GPU (nothing is downloaded; byte-level tokenizers stand in
for the real ones, so no tokenizer is fetched either). For each model, speed mode and size:
seconds an image and images a second at concurrency 1 and 8, through the local engine (as the
gateway serves it: queue, batching, PNG encoding) and as a bare loop of pipeline calls (the same
images per call as the engine draws); the serving overhead of one against the other; the
batching gain (images/s at concurrency 8 over concurrency 1); joules an image from NVML's
energy counter; the peak GPU memory.

Modes: ``plain`` (exact, eager), ``cache`` (First Block Cache, as ``cache: {kind: first_block,
threshold: T}`` in a model's config), ``compile`` (regional compilation, as ``compile: {}``),
``both`` (the cache and the whole denoiser compiled, as ``compile: {scope: whole}`` with the cache:
the config refuses a cache with regional compilation, whose hooks recompile per block). An SD or
SDXL UNet has no step cache: its cache modes are n/a. ``fp8``, asked for by name only (``--modes
plain,fp8``): the denoiser's linear layers in float8 through torchao with regional compilation, as
``quantize: fp8`` with ``compile: {}`` (a GPU of compute capability 8.9 or newer; n/a on the CPU).

The whole run keeps to ``--budget`` seconds: the measuring runs in a child process, which
writes each result as it gets it, skips what would not fit, and is stopped at the budget;
what was measured is always reported. Written to DIR: ``bench-gpu.md`` (the table),
``bench-gpu.json`` (every figure), ``cells.jsonl`` (the child's raw lines).
``--device cpu --tiny`` runs the same code on the built-in tiny models in seconds (compiled
with dynamo's eager backend: traced, no code generated), for the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import gc
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import msgspec

__all__ = ["MODELS", "Report", "main"]

MODES = ("plain", "cache", "compile", "both", "fp8")
DEFAULT_MODES = ("plain", "cache", "compile", "both")  # fp8 only when asked for: not yet measured on a GPU
COMPILED_MODES = ("compile", "both", "fp8")
MODELS = ("flux-schnell", "sdxl", "flux-dev")
DEFAULT_MODELS = ("flux-schnell", "sdxl")
# Steps a request draws, by model: FLUX.1-schnell is distilled for 4, FLUX.1-dev runs 28, SDXL 20 here.
STEPS = {"flux-schnell": 4, "flux-dev": 28, "sdxl": 20}
TINY = {"flux-schnell": "tiny-flux", "flux-dev": "tiny-flux", "sdxl": "tiny-sdxl"}
CACHE_FAMILIES = {"flux-schnell", "flux-dev"}
# The order in which (model, mode) pairs are measured: what matters most first, so a short budget keeps it.
PRIORITY = [("plain", "flux-schnell"), ("plain", "sdxl"), ("plain", "flux-dev"), ("cache", "flux-schnell"),
            ("compile", "flux-schnell"), ("both", "flux-schnell"), ("compile", "sdxl"), ("cache", "flux-dev"),
            ("compile", "flux-dev"), ("both", "flux-dev"), ("cache", "sdxl"), ("both", "sdxl"),
            ("fp8", "flux-schnell"), ("fp8", "sdxl"), ("fp8", "flux-dev")]  # fmt: skip
MAX_BATCH = 8  # the engine's max_batch_size; the pixel budget per call (batch_pixels) is the engine's default
CONCURRENCY = (1, 8)
REPORT_MARGIN_S = 15.0  # kept back from the budget for stopping the child and writing the report
MIN_PAIR_S = 45.0  # a (model, mode) starts on a GPU only with this much of the budget left (build, warm-up)
LOG_NAME, JSON_NAME, MD_NAME = "cells.jsonl", "bench-gpu.json", "bench-gpu.md"


# --- what the child writes, one JSON line each ---


class Cell(msgspec.Struct, kw_only=True, tag_field="kind", tag="cell"):
    """One measurement: ``images`` drawn by ``path`` at ``concurrency``."""

    model: str
    mode: str
    size: int
    path: Literal["engine", "bare"]
    concurrency: int
    images: int
    seconds: float
    images_per_s: float
    # Concurrency 1: the median image's seconds (engine: a request's latency, PNG included; bare: one call).
    seconds_per_image: float
    images_per_call: int
    batch_sizes: dict[int, int] = {}
    joules_per_image: float | None = None
    peak_gib: float | None = None


class Setup(msgspec.Struct, kw_only=True, tag_field="kind", tag="setup"):
    """A (model, mode) made ready: built, its options applied, warmed up (compiled) at each size."""

    model: str
    mode: str
    options: str
    build_s: float
    warm_up_s: float
    steps: int


class Skip(msgspec.Struct, kw_only=True, tag_field="kind", tag="skip"):
    """What was not measured, and why (the budget, an option the model lacks, a failure)."""

    model: str
    mode: str
    size: int | None = None
    reason: str


class Machine(msgspec.Struct, kw_only=True, tag_field="kind", tag="machine"):
    device: str
    name: str
    torch: str
    diffusers: str
    python: str
    energy: str
    started: str
    budget_s: float
    tiny: bool


Line = Cell | Setup | Skip | Machine
_decoder = msgspec.json.Decoder(Line)


class Report(msgspec.Struct, kw_only=True):
    """``bench-gpu.json``: the machine, every line the child wrote, and how the run ended."""

    machine: Machine | None
    setups: list[Setup]
    cells: list[Cell]
    skipped: list[Skip]
    elapsed_s: float
    ended: str


# --- building the pipelines ---


@contextlib.contextmanager
def _made_on(device: str) -> Iterator[None]:
    """Modules created inside are created in bf16 on ``device``: random initialisation runs there, in a
    fraction of the time the CPU would take, and no float32 copy (48 GB for FLUX's transformer) is made."""
    import torch

    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(before)


def build_pipeline(model: str, device: str, tiny: bool) -> Any:
    """The pipeline of ``model``: real size with random weights in bf16 on ``device``, or the tiny one in float32.

    Only the modules are made on the device: a scheduler keeps its tables in float32 on the CPU.
    """
    import torch

    if tiny:
        from local_backend.tiny import build_tiny_pipeline

        return build_tiny_pipeline(TINY[model]).to(device)
    pipeline = _build_flux(model, device) if model in CACHE_FAMILIES else _build_sdxl(device)
    return pipeline.to(torch.bfloat16)


def _tokenizer_ids(tokenizer: Any) -> dict[str, int]:
    # The byte-level stand-in tokenizer numbers its specials its own way: the encoder reads those.
    return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}  # fmt: skip


def _build_flux(model: str, device: str) -> Any:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from bench.published import FLUX_DEV_CHANGES, FLUX_SCHNELL
    from local_backend.tiny import clip_tokenizer, t5_tokenizer

    config = {part: dict(values) for part, values in FLUX_SCHNELL.items()}
    if model == "flux-dev":
        for part, changes in FLUX_DEV_CHANGES.items():
            config[part].update(changes)
    tokenizer, tokenizer_2 = clip_tokenizer(), t5_tokenizer()
    tokenizer_2.model_max_length = config["tokenizer_2"]["model_max_length"]
    t5_ids = {"pad_token_id": tokenizer_2.pad_token_id, "eos_token_id": tokenizer_2.eos_token_id}
    with _made_on(device):
        transformer = FluxTransformer2DModel.from_config(config["transformer"])
        vae = AutoencoderKL.from_config(config["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**{**config["text_encoder"], **_tokenizer_ids(tokenizer)}))
        text_encoder_2 = T5EncoderModel(T5Config(**{**config["text_encoder_2"], **t5_ids}))
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(config["scheduler"]),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


def _build_sdxl(device: str) -> Any:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from bench.published import SDXL_BASE
    from local_backend.tiny import clip_tokenizer

    tokenizer = clip_tokenizer()
    ids = _tokenizer_ids(tokenizer)
    with _made_on(device):
        unet = UNet2DConditionModel.from_config(SDXL_BASE["unet"])
        vae = AutoencoderKL.from_config(SDXL_BASE["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**{**SDXL_BASE["text_encoder"], **ids}))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**{**SDXL_BASE["text_encoder_2"], **ids}))
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=clip_tokenizer(),
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(SDXL_BASE["scheduler"]),
    )


# --- one (model, mode): made ready, then measured at each size ---


class Plan(msgspec.Struct, kw_only=True):
    model: str
    mode: str
    sizes: list[int]
    device: str
    tiny: bool
    cache_threshold: float
    images: int  # at concurrency 1; concurrency 8 draws 8


def model_settings(plan: Plan, steps: int) -> dict[str, Any]:
    """The model's config, as a gateway config would give it."""
    raw: dict[str, Any] = {"path": f"bench:{plan.model}", "max_pixels": max(plan.sizes) ** 2,
                           "default_steps": steps, "max_steps": max(steps, 50)}  # fmt: skip
    if plan.mode in ("cache", "both"):
        raw["cache"] = {"kind": "first_block", "threshold": plan.cache_threshold}
    if plan.mode in ("compile", "fp8"):
        raw["compile"] = {}
    if plan.mode == "fp8":
        raw["quantize"] = "fp8"
    if plan.mode == "both":  # the whole denoiser: the one scope a step cache combines with
        raw["compile"] = {"scope": "whole"}
    return raw


def make_ready(plan: Plan, steps: int, compile_backend: str) -> tuple[Any, float]:
    """Build the pipeline, apply the mode's options through the engine's own code; the model and its build seconds."""
    from local_backend.pipelines import pick_dtype, prepare_model
    from schemas.local import LocalModelSettings

    started = time.perf_counter()
    pipeline = build_pipeline(plan.model, plan.device, plan.tiny)
    settings = msgspec.convert(model_settings(plan, steps), LocalModelSettings)
    dtype = pick_dtype(plan.device, "bfloat16")
    model = prepare_model("bench", settings, pipeline, plan.device, dtype, compile_backend=compile_backend)
    _sync(plan.device)
    return model, time.perf_counter() - started


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Meters:
    """NVML's energy counter and torch's peak memory, around one measurement (None where there are none)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.nvml: Any = None
        self.why_not = "n/a: not a cuda device"
        if device.startswith("cuda"):
            try:
                from local_backend.energy import NvmlMeter

                self.nvml = NvmlMeter(device)
            except Exception as exc:  # no pynvml (nvidia-ml-py), or a GPU without the counter
                self.why_not = f"n/a: {type(exc).__name__}: {exc}"

    @property
    def energy(self) -> str:
        return "NVML total energy counter" if self.nvml is not None else self.why_not

    @contextlib.contextmanager
    def around(self, images: list[int]) -> Iterator[dict[str, float | None]]:
        """Yields a dict that holds ``joules_per_image`` and ``peak_gib`` once the block ends (``images[0]`` drawn)."""
        import torch

        cuda = self.device.startswith("cuda")
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = self.nvml.begin() if self.nvml is not None else None
        figures: dict[str, float | None] = {"joules_per_image": None, "peak_gib": None}
        yield figures
        _sync(self.device)
        if self.nvml is not None and images[0]:
            figures["joules_per_image"] = self.nvml.joules_since(start) / images[0]
        if cuda:
            figures["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30


class Child:
    """The measuring process: writes each result to ``cells.jsonl`` as soon as it has it."""

    def __init__(self, out: Path, deadline: float, device: str, tiny: bool) -> None:
        self.log = (out / LOG_NAME).open("ab", buffering=0)
        self.deadline = deadline
        self.device = device
        self.tiny = tiny
        self.meters = Meters(device)
        self.compile_backend = "eager" if tiny else "inductor"

    def write(self, line: Line) -> None:
        self.log.write(msgspec.json.encode(line) + b"\n")
        print(_progress(line), flush=True)

    def left(self) -> float:
        return self.deadline - time.time()

    async def run_pair(self, plan: Plan) -> None:
        from local_backend.engine import LocalEngine
        from schemas.local import LocalBackendSettings

        steps = 2 if plan.tiny else STEPS[plan.model]
        built: dict[str, Any] = {}
        backend = self.compile_backend

        class BenchEngine(LocalEngine):
            """The engine as the gateway runs it, its one model built in memory rather than read from disk."""

            def _load(self, name: str, settings: Any, dtype: Any) -> Any:
                model, built["build_s"] = make_ready(plan, steps, backend)
                return model

        raw: dict[str, Any] = {"kind": "local", "device": plan.device, "queue_size": 64, "max_batch_size": MAX_BATCH,
               "batch_window_ms": 10.0, "models": {"bench": model_settings(plan, steps)}}  # fmt: skip
        raw["models"]["bench"].pop("compile", None)  # applied by make_ready (with this run's backend)
        raw["models"]["bench"].pop("cache", None)
        engine = BenchEngine(msgspec.convert(raw, LocalBackendSettings), name="bench")
        await engine.start()
        try:
            if "bench" not in engine.models:
                reason = engine.stats().models.get("bench", "did not load")
                self.write(Skip(model=plan.model, mode=plan.mode, reason=f"failed: {reason}"))
                return
            model = engine.models["bench"]
            started = time.perf_counter()
            for size in plan.sizes:  # compile (or warm) every shape the measurements use, before timing any
                await self.warm_up(engine, model, size, compiled=plan.mode in COMPILED_MODES)
            ready = time.perf_counter() - started
            label = model.options.label()
            self.write(Setup(model=plan.model, mode=plan.mode, options=label, build_s=built["build_s"],
                             warm_up_s=ready, steps=steps))  # fmt: skip
            for size in plan.sizes:
                await self.measure_size(engine, model, plan, size)
        finally:
            await engine.aclose()

    async def warm_up(self, engine: Any, model: Any, size: int, compiled: bool) -> None:
        per_call = _per_call(model, size)
        await engine.run_on_device(bare_call, model, size, 1, 0)
        if per_call > 1:
            await engine.run_on_device(bare_call, model, size, per_call, 0)
        await engine_run(engine, size, 1, 1, self.deadline)
        if compiled and per_call > 1:  # the engine's first wave of 8 forms batches of other sizes (1, then 7)
            await engine_run(engine, size, MAX_BATCH, MAX_BATCH, self.deadline)

    async def measure_size(self, engine: Any, model: Any, plan: Plan, size: int) -> None:
        per_call = _per_call(model, size)
        # One image's seconds, from a timed call: what the cells below are sized by.
        started = time.perf_counter()
        await engine.run_on_device(bare_call, model, size, 1, 1)
        one = time.perf_counter() - started
        for concurrency in CONCURRENCY:
            images = plan.images if concurrency == 1 else MAX_BATCH
            paths: tuple[Literal["engine", "bare"], ...] = ("engine", "bare")
            for path in paths:
                need = one * images * (1.3 if path == "engine" else 1.1)
                if self.left() < need + 1:
                    self.write(Skip(model=plan.model, mode=plan.mode, size=size,
                                    reason=f"budget: {path} at concurrency {concurrency} "
                                           f"needs about {need:.0f} s, {max(0, self.left()):.0f} s left"))  # fmt: skip
                    continue
                counted = [0]
                with self.meters.around(counted) as figures:
                    if path == "engine":
                        row = await engine_run(engine, size, concurrency, images, self.deadline)
                    else:
                        row = await engine.run_on_device(
                            bare_run, model, size, 1 if concurrency == 1 else per_call, images
                        )
                    counted[0] = row["images"]
                self.write(Cell(model=plan.model, mode=plan.mode, size=size, path=path, concurrency=concurrency,
                                images=row["images"], seconds=row["seconds"], images_per_s=row["images_per_s"],
                                seconds_per_image=row["seconds_per_image"], images_per_call=row["images_per_call"],
                                batch_sizes=row["batch_sizes"], joules_per_image=figures["joules_per_image"],
                                peak_gib=figures["peak_gib"]))  # fmt: skip


def _per_call(model: Any, size: int) -> int:
    """Images one pipeline call draws at ``size`` when 8 are waiting: the engine's own rule (pixel budget, cache)."""
    from local_backend.rules import resolve
    from schemas.canonical import ImageRequest

    work = resolve(ImageRequest(model="bench", prompt="size", width=size, height=size), model.rules)
    return work.images_per_call(MAX_BATCH)


def _release(device: str) -> None:
    import torch

    torch._dynamo.reset()  # compiled code holds the modules it was traced from
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def bare_call(model: Any, size: int, batch: int, seed: int) -> list[Any]:
    """One pipeline call of ``batch`` images, as the engine makes it but with nothing around it."""
    import torch

    output = model.text_to_image(
        prompt=[f"bare {seed} {index}" for index in range(batch)],
        height=size,
        width=size,
        num_inference_steps=model.rules.default_steps,
        guidance_scale=model.rules.default_guidance,
        generator=[torch.Generator("cpu").manual_seed(seed + index) for index in range(batch)],
        output_type="pil",
        **model.family_arguments([None] * batch),
    )
    return list(output.images)


def bare_run(model: Any, size: int, batch: int, images: int) -> dict[str, Any]:
    """``images`` images in calls of ``batch``, one call after another (on the device thread)."""
    calls = max(1, images // batch)
    seconds = []
    started = time.perf_counter()
    for call in range(calls):
        began = time.perf_counter()
        bare_call(model, size, batch, 1000 + call * batch)
        seconds.append(time.perf_counter() - began)
    elapsed = time.perf_counter() - started
    drawn = calls * batch
    return {"images": drawn, "seconds": elapsed, "images_per_s": drawn / elapsed, "images_per_call": batch,
            "seconds_per_image": statistics.median(seconds) / batch, "batch_sizes": {batch: calls}}  # fmt: skip


async def engine_run(engine: Any, size: int, concurrency: int, images: int, deadline: float) -> dict[str, Any]:
    """``concurrency`` clients asking one image at a time until ``images`` are drawn (or the deadline is near)."""
    from schemas.canonical import ImageRequest

    before = Counter(engine.stats().batch_sizes)
    latencies: list[float] = []
    remaining = [images]

    async def client(index: int) -> None:
        while remaining[0] > 0 and (not latencies or time.time() + max(latencies) < deadline):
            remaining[0] -= 1
            request = ImageRequest(model="bench", prompt=f"client {index}", width=size, height=size)
            began = time.perf_counter()
            await engine.generate(request)
            latencies.append(time.perf_counter() - began)

    started = time.perf_counter()
    await asyncio.gather(*(client(index) for index in range(concurrency)))
    elapsed = time.perf_counter() - started
    seen = Counter(engine.stats().batch_sizes)
    seen.subtract(before)
    sizes = {size: count for size, count in sorted(seen.items()) if count > 0}
    return {"images": len(latencies), "seconds": elapsed, "images_per_s": len(latencies) / elapsed,
            "seconds_per_image": statistics.median(latencies), "batch_sizes": sizes,
            "images_per_call": max(sizes, default=1)}  # fmt: skip


def _progress(line: Line) -> str:
    if isinstance(line, Cell):
        where = f"{line.model} {line.mode} {line.size}px {line.path} c{line.concurrency}"
        rate = f"{line.images_per_s:.3f} images/s, {line.seconds_per_image:.3f} s/image"
        return f"  {where}: {line.images} images, {rate}"
    if isinstance(line, Setup):
        return f"{line.model} {line.mode}: built in {line.build_s:.1f} s, warmed up in {line.warm_up_s:.1f} s"
    if isinstance(line, Skip):
        return f"  skipped {line.model} {line.mode} {line.size or ''}: {line.reason}"
    return f"{line.name} ({line.device}), torch {line.torch}, diffusers {line.diffusers}; energy: {line.energy}"


def plans(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    wanted_models = args.models.split(",")
    wanted_modes = args.modes.split(",")
    for mode, model in PRIORITY:
        if model in wanted_models and mode in wanted_modes:
            yield model, mode


async def child_main(args: argparse.Namespace) -> int:
    import diffusers
    import torch

    out = Path(args.out)
    child = Child(out, args.deadline, args.device, args.tiny)
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else _cpu_name()
    child.write(Machine(device=args.device, name=name, torch=str(torch.__version__), diffusers=diffusers.__version__,
                        python=platform.python_version(), energy=child.meters.energy,
                        started=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                        budget_s=args.budget, tiny=args.tiny))  # fmt: skip
    sizes = [int(size) for size in args.sizes.split(",")]
    minimum = 0.0 if args.tiny else MIN_PAIR_S
    for model, mode in plans(args):
        if mode in ("cache", "both") and model not in CACHE_FAMILIES:
            child.write(Skip(model=model, mode=mode, reason="n/a: a UNet has no step cache in diffusers"))
            continue
        if mode == "fp8" and not args.device.startswith("cuda"):
            child.write(Skip(model=model, mode=mode, reason="n/a: float8 (torchao) needs a CUDA device"))
            continue
        if child.left() < minimum:
            child.write(Skip(model=model, mode=mode, reason=f"budget: {max(0, child.left()):.0f} s left"))
            continue
        plan = Plan(model=model, mode=mode, sizes=sizes, device=args.device, tiny=args.tiny,
                    cache_threshold=args.cache_threshold, images=args.images)  # fmt: skip
        try:
            await child.run_pair(plan)
        except Exception as exc:  # one pair's failure (out of memory, a compile error) does not end the run
            child.write(Skip(model=model, mode=mode, reason=f"failed: {type(exc).__name__}: {str(exc)[:300]}"))
        _release(args.device)  # the pair's model is gone by now: its memory goes back before the next is built
    return 0


def _cpu_name() -> str:
    from bench.local import cpu_name

    return f"{cpu_name()}, {os.cpu_count()} cores"


# --- the parent: starts the child, stops it at the budget, writes the report ---


def run_child(argv: list[str], out: Path, budget: float) -> tuple[str, float]:
    """Run the measuring child until it ends or the budget does; how it ended, and the seconds it took."""
    started = time.time()
    deadline = started + budget - REPORT_MARGIN_S
    command = [sys.executable, "-m", "bench.gpu", *argv, "--child", "--deadline", f"{deadline:.3f}"]
    process = subprocess.Popen(command, start_new_session=True)
    try:
        code = process.wait(timeout=max(1.0, deadline - time.time() + 5))
        ended = "finished" if code == 0 else f"the measuring process failed (exit status {code})"
    except subprocess.TimeoutExpired:
        ended = "stopped at the budget"
        _stop(process)
    return ended, time.time() - started


def _stop(process: subprocess.Popen[bytes]) -> None:
    for sent in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sent)
        try:
            process.wait(timeout=5)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):  # what the child left behind in its group goes with it
        os.killpg(process.pid, signal.SIGKILL)


def read_report(out: Path, elapsed: float, ended: str) -> Report:
    machine, setups, cells, skipped = None, [], [], []
    path = out / LOG_NAME
    for raw in path.read_bytes().splitlines() if path.exists() else []:
        try:
            line = _decoder.decode(raw)
        except msgspec.DecodeError:
            continue  # a line cut short when the child was stopped
        if isinstance(line, Machine):
            machine = line
        elif isinstance(line, Setup):
            setups.append(line)
        elif isinstance(line, Cell):
            cells.append(line)
        else:
            skipped.append(line)
    return Report(machine=machine, setups=setups, cells=cells, skipped=skipped, elapsed_s=elapsed, ended=ended)


def _fmt(value: float | None, digits: int = 3, suffix: str = "") -> str:
    return "—" if value is None else f"{value:.{digits}f}{suffix}"


def _ratio(served: float | None, bare: float | None) -> float | None:
    return None if served is None or bare is None or bare == 0 else 100 * (served - bare) / bare


def render(report: Report) -> str:
    """The markdown table: a row per (model, mode, size)."""
    machine = report.machine
    lines = ["## GPU: FLUX.1-schnell and SDXL of real size (`make bench-gpu`)", ""]
    if machine is not None:
        lines += [f"Device: {machine.name} ({machine.device}); torch {machine.torch}, diffusers {machine.diffusers}, "
                  f"Python {machine.python}; started {machine.started}; budget {machine.budget_s:.0f} s"
                  f"{'; TINY models (noise, a test of the code, not of a GPU)' if machine.tiny else ''}.",
                  f"Energy: {machine.energy}.", ""]  # fmt: skip
    tiny = machine is not None and machine.tiny
    what = ("The built-in tiny models in float32 (noise: a check of the code, not a measurement of a GPU)" if tiny
            else "Real-size architectures with random weights in bf16 (noise, at the real cost)")  # fmt: skip
    lines += [f"Run {report.ended} after {report.elapsed_s:.0f} s. {what}; "
              "engine = the local engine as the gateway runs it (queue, batching, PNG); bare = pipeline calls alone. "
              "s/image at concurrency 1 is the median request (engine) or call (bare); overhead = engine against "
              "bare (s/image at 1, images/s at 8); batching gain = images/s at 8 over images/s at 1 (engine).",
              ""]  # fmt: skip
    steps = {(setup.model, setup.mode): setup for setup in report.setups}
    lines += ["| model | mode | size | engine s/image @1 | bare s/image @1 | overhead @1 | engine images/s @8 "
              "| bare images/s @8 | overhead @8 | images/call @8 | batching gain | J/image (engine @8) | peak GiB |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    keys = dict.fromkeys((cell.model, cell.mode, cell.size) for cell in report.cells)
    for model, mode, size in keys:
        got = {(c.path, c.concurrency): c for c in report.cells if (c.model, c.mode, c.size) == (model, mode, size)}
        e1, b1, e8, b8 = (got.get(key) for key in (("engine", 1), ("bare", 1), ("engine", 8), ("bare", 8)))
        e1s, b1s = (c.seconds_per_image if c else None for c in (e1, b1))
        e8r, b8r = (c.images_per_s if c else None for c in (e8, b8))
        over8 = None if e8r is None or b8r is None else 100 * (b8r - e8r) / b8r
        gain = None if e8r is None or e1 is None else e8r / e1.images_per_s
        energy = next((c.joules_per_image for c in (e8, e1, b8, b1) if c and c.joules_per_image is not None), None)
        peak = max((c.peak_gib for c in got.values() if c.peak_gib is not None), default=None)
        setup = steps.get((model, mode))
        label = f"{mode} ({setup.options}, {setup.steps} steps)" if setup else mode
        per_call = e8.images_per_call if e8 else "—"
        cells = [model, label, f"{size}²", _fmt(e1s), _fmt(b1s), _fmt(_ratio(e1s, b1s), 1, " %"), _fmt(e8r, 2),
                 _fmt(b8r, 2), _fmt(over8, 1, " %"), str(per_call), _fmt(gain, 2, " x"), _fmt(energy, 0),
                 _fmt(peak, 1)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    if report.setups:
        lines += ["", "Made ready (built from the config, options applied, every measured shape warmed up or "
                  "compiled): " + "; ".join(f"{s.model} {s.mode} {s.build_s:.0f} s + {s.warm_up_s:.0f} s"
                                            for s in report.setups) + "."]  # fmt: skip
    if report.skipped:
        lines += ["", "Not measured:", ""]
        lines += [f"- {s.model} {s.mode}{f' {s.size}²' if s.size else ''}: {s.reason}" for s in report.skipped]
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder the results are written to (made if absent)")
    parser.add_argument("--budget", type=float, default=470.0, help="seconds for the whole run (default 470)")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--tiny", action="store_true", help="the built-in tiny models instead (CPU, seconds)")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"of {', '.join(MODELS)}")
    parser.add_argument("--modes", default=",".join(DEFAULT_MODES), help=f"of {', '.join(MODES)}")
    parser.add_argument("--sizes", default=None, help="image sides (default 1024,512; --tiny: 128,64)")
    parser.add_argument("--images", type=int, default=3, help="images at concurrency 1 (default 3)")
    parser.add_argument("--cache-threshold", type=float, default=0.05, help="the step cache's (default 0.05)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sizes is None:
        args.sizes = "128,64" if args.tiny else "1024,512"
    unknown = {*args.models.split(",")} - set(MODELS) or {*args.modes.split(",")} - set(MODES)
    if unknown:
        parser.error(f"unknown: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    out = Path(args.out)
    if args.child:
        return asyncio.run(child_main(args))
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("bench-gpu: torch sees no CUDA device here; use --device cpu --tiny to try the code on the CPU")
            return 2
    out.mkdir(parents=True, exist_ok=True)
    (out / LOG_NAME).unlink(missing_ok=True)
    ended, elapsed = run_child(argv, out, args.budget)
    report = read_report(out, elapsed, ended)
    (out / JSON_NAME).write_bytes(msgspec.json.format(msgspec.json.encode(report)) + b"\n")
    table = render(report)
    (out / MD_NAME).write_text(table, encoding="utf-8")
    print("\n" + table)
    print(f"written to {out / MD_NAME} and {out / JSON_NAME}")
    return 0 if report.cells else 1


if __name__ == "__main__":
    raise SystemExit(main())
