"""Loading diffusers pipelines from disk, and drawing a batch of work with them.

One set of weights serves three pipelines: text-to-image as loaded, and image-to-image
and inpainting made from it with ``from_pipe`` (no copy of the weights). Nothing here
is safe to call from two threads at once (a scheduler keeps state between steps): the
engine calls it from its one device thread.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import diffusers.utils.logging
import msgspec
import torch
from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, DiffusionPipeline
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, OfflineModeIsEnabled
from PIL import Image

from local_backend.images import read_image, read_mask
from local_backend.previews import Reporter
from local_backend.rules import ModelRules, Work
from local_backend.tiny import BUILTIN_PREFIX, TINY_KINDS, ensure_tiny
from schemas.canonical import ErrorCode, GatewayError, Operation
from schemas.local import (
    MAG_RATIOS_FLUX1,
    CompileSettings,
    FasterCache,
    FirstBlockCache,
    LocalModelSettings,
    MagCache,
    PyramidAttentionCache,
    StepCacheSettings,
    TaylorSeerCache,
)

__all__ = [
    "Drawn",
    "LoadedModel",
    "SpeedOptions",
    "StepCacheRun",
    "denoiser",
    "load_model",
    "pick_device",
    "pick_dtype",
    "prepare_model",
]

# (default side, steps, guidance) of each family, used where the settings leave them open.
FAMILY_DEFAULTS: dict[str, tuple[int, int, float]] = {
    "sd": (512, 30, 7.5),
    "sdxl": (1024, 30, 5.0),
    "flux": (1024, 28, 3.5),
    "other": (1024, 30, 5.0),
}
# The built-in tiny models draw noise: small and few steps, so they answer in milliseconds.
TINY_DEFAULTS = (64, 2, 2.0)
# Flux reads up to this many T5 tokens; fewer when the tokenizer says so (the tiny model's).
FLUX_MAX_SEQUENCE = 512
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
# A diffusers pipeline. Typed loosely: under mypy diffusers' lazy imports resolve to placeholder classes.
Pipeline = Any
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}

# A server's log is no place for loading bars (each pipeline's own bar is switched off where it is made).
diffusers.utils.logging.disable_progress_bar()


def pick_device(setting: str) -> str:
    """``auto`` is the GPU when there is one, else the CPU; asking for cuda without one is an error."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"the local backend is set to device {setting!r}, but torch sees no CUDA device")
    return setting


def pick_dtype(device: str, setting: str) -> torch.dtype:
    """The configured dtype on a GPU (fp16 where bf16 is not supported); float32 on the CPU."""
    if not device.startswith("cuda"):
        return torch.float32  # half precision on the CPU is slow where it works at all
    if setting == "bfloat16" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return _DTYPES[setting]


class SpeedOptions(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """The speed options a loaded model runs with: in its engine's stats, and on each result it draws.

    ``cache`` (e.g. ``first_block:0.05``, ``taylor_seer:interval=5,order=1,warmup=3,lite=False``) is set when
    a step cache is on: an image drawn with it can differ from a full one (within the bounds docs/local_backend.md
    states) unless its setting is exact. ``compile`` is the mode (``default``: regional compilation of the repeated
    blocks) or ``whole:`` and the mode (the whole denoiser compiled). ``quantize`` (``fp8``, ``fp8_weight_only``)
    is set when the denoiser's linear layers are float8 (torchao): an image drawn so differs from a full-precision one.
    """

    dtype: str
    quantize: str | None = None
    cache: str | None = None
    compile: str | None = None
    fuse_qkv: bool = False
    channels_last: bool = False

    def label(self) -> str:
        """One line for a result's metadata: ``bfloat16``, ``bfloat16 first_block:0.05 compile:default`` …"""
        parts = [self.dtype]
        if self.quantize is not None:
            parts.append(self.quantize)
        if self.cache is not None:
            parts.append(self.cache)
        if self.compile is not None:
            parts.append(f"compile:{self.compile}")
        if self.fuse_qkv:
            parts.append("fuse_qkv")
        if self.channels_last:
            parts.append("channels_last")
        return " ".join(parts)


class Drawn(msgspec.Struct, kw_only=True):
    """What one batch of work produced: each work's images, and the size of each pipeline call made."""

    images: list[list[Image.Image]]
    # Images drawn by each pipeline call, and the seconds each call took.
    calls: list[int]
    call_seconds: list[float]
    seconds: float


class LoadedModel:
    """One model's weights on the device, as the pipelines for generation, image-to-image and inpainting."""

    def __init__(
        self,
        rules: ModelRules,
        text_to_image: Pipeline,
        device: str,
        options: SpeedOptions | None = None,
        step_cache: StepCacheRun | None = None,
    ) -> None:
        self.device = device
        self.step_cache = step_cache
        self.options = options or SpeedOptions(dtype=str(text_to_image.dtype).removeprefix("torch."))
        self.text_to_image = text_to_image
        self.image_to_image = _derived(AutoPipelineForImage2Image, text_to_image)
        self.inpainting = _derived(AutoPipelineForInpainting, text_to_image)
        if self.image_to_image is None:  # a family without image-to-image only generates
            rules = msgspec.structs.replace(rules, operations=frozenset({Operation.GENERATE}))
        self.rules = rules

    def draw(self, works: Sequence[Work], max_images: int, reporters: Sequence[Reporter | None] | None = None) -> Drawn:
        """Draw every image of ``works`` in pipeline calls of at most ``max_images`` images.

        Several works form one call only when they agree on their batch key (the engine
        sees to that); an edit or variation is always alone. ``reporters`` (one per work, or
        None) hear of each step and get their previews (``local_backend.previews``).
        """
        started = time.perf_counter()
        timings: list[float] = []
        reporters = list(reporters) if reporters is not None else [None] * len(works)
        if works[0].operation is Operation.GENERATE:
            images, calls = self._generate(works, max_images, timings, reporters)
        else:
            assert len(works) == 1, "an edit or variation runs alone"
            images, calls = self._edit(works[0], max_images, timings, reporters[0])
        return Drawn(images=images, calls=calls, call_seconds=timings, seconds=time.perf_counter() - started)

    def _generate(
        self, works: Sequence[Work], max_images: int, timings: list[float], reporters: Sequence[Reporter | None]
    ) -> tuple[list[list[Image.Image]], list[int]]:
        first = works[0]
        # One entry per image: its prompt, negative prompt, seed and the reporter of its work (first image only).
        rows = [
            (work.prompt, work.negative_prompt, seed, reporter if i == 0 else None)
            for work, reporter in zip(works, reporters, strict=True)
            for i, seed in enumerate(work.seeds)
        ]
        drawn: list[Image.Image] = []
        calls = []
        for chunk in _chunks(rows, max_images):
            prompts = [prompt for prompt, _, _, _ in chunk]
            negatives = [negative for _, negative, _, _ in chunk]
            started = time.perf_counter()
            drawn += self._call(
                self.text_to_image,
                first,
                prompts,
                negatives,
                [seed for _, _, seed, _ in chunk],
                first.steps,
                reporters=[reporter for _, _, _, reporter in chunk],
            )
            timings.append(time.perf_counter() - started)
            calls.append(len(chunk))
        return _split(drawn, [work.n for work in works]), calls

    def _edit(
        self, work: Work, max_images: int, timings: list[float], reporter: Reporter | None
    ) -> tuple[list[list[Image.Image]], list[int]]:
        pipeline = self.inpainting if work.mask is not None else self.image_to_image
        if pipeline is None:
            raise GatewayError(
                ErrorCode.OPERATION_NOT_SUPPORTED,
                f"model {work.model!r} ({self.rules.family}) has no {work.operation.value} pipeline",
            )
        assert work.image is not None
        extra: dict[str, Any] = {
            "image": read_image(work.image, work.width, work.height, self.rules.max_input_pixels),
            "strength": work.strength,
        }
        if work.mask is not None:
            extra["mask_image"] = read_mask(work.mask, work.width, work.height, self.rules.max_input_pixels)
        # img2img runs int(steps * strength) steps: ask for enough that at least one is run.
        steps = max(work.steps, math.ceil(1 / work.strength))
        drawn: list[Image.Image] = []
        calls = []
        for number, chunk in enumerate(_chunks(work.seeds, max_images)):
            count, started = len(chunk), time.perf_counter()
            reporters = [reporter if number == 0 and i == 0 else None for i in range(count)]
            drawn += self._call(
                pipeline,
                work,
                [work.prompt] * count,
                [work.negative_prompt] * count,
                list(chunk),
                steps,
                reporters=reporters,
                **extra,
            )
            timings.append(time.perf_counter() - started)
            calls.append(count)
        return [drawn], calls

    def _call(
        self,
        pipeline: Pipeline,
        work: Work,
        prompts: list[str],
        negatives: list[str | None],
        seeds: list[int],
        steps: int,
        reporters: Sequence[Reporter | None] = (),
        **extra: Any,
    ) -> list[Image.Image]:
        """One pipeline call: one generator per image, so each image is fixed by its own seed.

        ``reporters`` (by row of the call) hear of each step, and take their previews from their row's latents.
        """
        # Generators on the CPU: the same seed starts from the same noise on any device.
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        kwargs = self.family_arguments(negatives)
        listening = [(row, reporter) for row, reporter in enumerate(reporters) if reporter is not None]
        if listening:
            everyone = len(listening) == len(seeds)  # every image of the call has a reporter that may cancel
            kwargs["callback_on_step_end"] = _step_callback(listening, work, steps, everyone)
        with self._stepping(pipeline, _steps_run(steps, extra.get("strength"))):
            output = pipeline(
                prompt=prompts,
                height=work.height,
                width=work.width,
                num_inference_steps=steps,
                guidance_scale=work.guidance,
                generator=generators,
                output_type="pil",
                **kwargs,
                **extra,
            )
        return list(output.images)

    @contextlib.contextmanager
    def _stepping(self, pipeline: Pipeline, steps: int) -> Iterator[None]:
        """Around one pipeline call: the step cache (if any) starts afresh, knows the call's steps and pipeline."""
        if self.step_cache is None:
            yield
            return
        with self.step_cache.running(pipeline, steps):
            yield

    def family_arguments(self, negatives: list[str | None]) -> dict[str, Any]:
        """The call arguments that depend on the model's family (negative prompts, Flux's token count)."""
        if self.rules.family == "flux":
            # Flux has no negative prompt (without true CFG); it reads as many T5 tokens as asked.
            tokenizer = getattr(self.text_to_image, "tokenizer_2", None)
            longest = getattr(tokenizer, "model_max_length", FLUX_MAX_SEQUENCE)
            return {"max_sequence_length": min(FLUX_MAX_SEQUENCE, longest)}
        if all(negative is None for negative in negatives):
            return {}  # the pipeline's own default (SDXL: zeros rather than an encoded empty prompt)
        return {"negative_prompt": [negative or "" for negative in negatives]}

    def warm_up(self) -> None:
        """One step at the default size, so the first request does not pay for lazy initialisation."""
        side = self.rules.default_size
        with self._stepping(self.text_to_image, 1):
            self.text_to_image(
                prompt=["warm-up"],
                height=side,
                width=side,
                num_inference_steps=1,
                generator=[torch.Generator("cpu").manual_seed(0)],
                output_type="pil",
                **self.family_arguments([None]),
            )


def _steps_run(steps: int, strength: float | None) -> int:
    """The denoiser steps a call of ``steps`` runs: all, or an edit's last ``strength`` of them (diffusers' count)."""
    if strength is None:
        return steps
    return steps - int(max(steps - min(steps * strength, steps), 0))


class StepCacheRun:
    """A step cache on a loaded model's denoiser, as each pipeline call needs it.

    diffusers' cache hooks keep state between the steps of one call: it starts afresh at each call (a call that
    failed half-way must not leave its state to the next). They read their state under a cache context, which
    the text-to-image pipeline sets and Flux's image-to-image and inpainting pipelines do not: the call runs
    under one. Pyramid Attention Broadcast and FasterCache ask the running pipeline for its timestep (the three
    pipelines share one denoiser); MagCache's ratios are stretched to the steps the call runs.
    """

    def __init__(self, model: Any, config: Any = None) -> None:
        self.model = model
        self.config = config
        self.pipeline: Pipeline | None = None
        self.mag_ratios: torch.Tensor | None = None
        self._timestep: torch.Tensor | None = None

    def watch_timesteps(self) -> None:
        """Keep the timestep the denoiser is given (for a cache that asks for it, in a pipeline that keeps none)."""
        self.model.register_forward_pre_hook(self._seen_timestep, with_kwargs=True)

    @torch.compiler.disable
    def _seen_timestep(self, _module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        timestep = kwargs.get("timestep")
        if isinstance(timestep, torch.Tensor) and timestep.numel():
            self._timestep = timestep.flatten()[0] * 1000  # Flux's pipelines pass t / 1000 (kept on the device)

    def timestep(self) -> float | None:
        """The running call's timestep, 1000 to 0 (what PAB and FasterCache compare with their ranges).

        The pipeline's own ``current_timestep`` where it keeps one (text-to-image), else the one the denoiser
        was last given (Flux's image-to-image and inpainting keep none).
        """
        current = getattr(self.pipeline, "current_timestep", None)
        if current is None:
            current = self._timestep
        if isinstance(current, torch.Tensor):
            return float(current.flatten()[0])
        return None if current is None else float(current)

    @contextlib.contextmanager
    def running(self, pipeline: Pipeline, steps: int) -> Iterator[None]:
        from diffusers.hooks.mag_cache import nearest_interp

        self.model._reset_stateful_cache()
        if self.mag_ratios is not None:
            # MagCache counts the steps of a call against `num_inference_steps`, indexing its ratios by step.
            self.config.num_inference_steps = steps
            self.config.mag_ratios = nearest_interp(self.mag_ratios, steps)
        self.pipeline, self._timestep = pipeline, None
        try:
            with self.model.cache_context("cond"):
                yield
        finally:
            self.pipeline = None


def _step_callback(
    listening: list[tuple[int, Reporter]], work: Work, steps: int, everyone: bool
) -> Callable[..., dict[str, Any]]:
    """diffusers' ``callback_on_step_end``: each reporter hears of the step; a preview from its row when due.

    When ``everyone`` (each image of the call has a reporter) and all their callers have gone,
    the call stops denoising: the remaining steps are skipped (its images are thrown away).
    """

    def on_step_end(pipeline: Pipeline, index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        if everyone and all(reporter.cancelled for _, reporter in listening):
            pipeline._interrupt = True  # diffusers skips the steps left
            return tensors
        total = int(getattr(pipeline, "_num_timesteps", None) or steps)  # img2img runs fewer than asked
        step = index + 1
        due = [(row, reporter) for row, reporter in listening if reporter.wants_preview(step, total)]
        if due:
            latents = tensors["latents"]
            if latents.ndim == 3 and hasattr(pipeline, "_unpack_latents"):  # Flux packs 2x2 latents into tokens
                latents = pipeline._unpack_latents(latents, work.height, work.width, pipeline.vae_scale_factor)
            for row, reporter in due:
                reporter.preview(step, total, latents[row])
        for _, reporter in listening:
            reporter.step(step, total)
        return tensors

    return on_step_end


def _derived(auto: Any, pipeline: Pipeline) -> Pipeline | None:
    """The image-to-image or inpainting pipeline over the same weights; None when the family has none."""
    try:
        derived = auto.from_pipe(pipeline)
    except (ValueError, KeyError):
        return None
    derived.set_progress_bar_config(disable=True)
    return derived


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _split(images: list[Image.Image], counts: list[int]) -> list[list[Image.Image]]:
    """Cut the flat list of a batch's images back into each work's own."""
    parts, start = [], 0
    for count in counts:
        parts.append(images[start : start + count])
        start += count
    return parts


# --- loading ---


def load_model(
    name: str, settings: LocalModelSettings, device: str, dtype: torch.dtype, where: str = ""
) -> LoadedModel:
    """Load the model ``settings.path`` names onto ``device``; ``GatewayError`` (model_not_found) when absent.

    Its speed options are applied here (compilation included; the warm-up compiles): one the pipeline
    does not support is a ``GatewayError`` naming the field, under ``where`` (``$.providers.<p>.models.<m>``).
    """
    source = _source(name, settings.path)
    try:
        pipeline = DiffusionPipeline.from_pretrained(source, dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as exc:
        if _is_missing(exc):
            raise _not_found(name, settings.path, source) from exc
        raise
    pipeline.to(device)
    return prepare_model(name, settings, pipeline, device, dtype, where)


def prepare_model(
    name: str,
    settings: LocalModelSettings,
    pipeline: Pipeline,
    device: str,
    dtype: torch.dtype,
    where: str = "",
    compile_backend: str = "inductor",
) -> LoadedModel:
    """A pipeline already on ``device`` (in ``dtype``) as a model to serve: its speed options applied, its rules made.

    ``load_model`` ends here; bench/gpu.py starts here with pipelines it builds in memory.
    ``compile_backend`` is torch.compile's (the bench's CPU mode traces with ``eager``, generating no code).
    """
    pipeline.set_progress_bar_config(disable=True)
    where = where or f"local model {name!r}"
    options, step_cache = _apply_speed_options(name, settings, pipeline, device, dtype, where, compile_backend)
    rules = _rules(name, settings, pipeline)
    if settings.cache is not None and not settings.cache.exact:
        # A cache decides for the whole call: an image must not depend on its companions.
        rules = msgspec.structs.replace(rules, batch_alone=True)
    return LoadedModel(rules, pipeline, device, options, step_cache)


def denoiser(pipeline: Pipeline) -> Any:
    """The model the pipeline calls at every step: its transformer (Flux) or its UNet (SD, SDXL)."""
    return getattr(pipeline, "transformer", None) or pipeline.unet


def _option_error(where: str, field: str, message: str) -> GatewayError:
    return GatewayError(ErrorCode.UPSTREAM_ERROR, f"`{where}.{field}`: {message}")


def _apply_speed_options(
    name: str,
    settings: LocalModelSettings,
    pipeline: Pipeline,
    device: str,
    dtype: torch.dtype,
    where: str,
    compile_backend: str = "inductor",
) -> tuple[SpeedOptions, StepCacheRun | None]:
    """Fuse, reformat, quantize, cache and compile the denoiser as ``settings`` ask; what it now runs with, and its
    cache. Quantizing comes after fusing (the fused projections are new linear layers) and before compiling."""
    from diffusers.models.cache_utils import CacheMixin

    model = denoiser(pipeline)
    kind = type(model).__name__
    if settings.fuse_qkv:
        if not hasattr(model, "fuse_qkv_projections"):
            raise _option_error(where, "fuse_qkv", f"{kind} cannot fuse its attention projections")
        model.fuse_qkv_projections()
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
        pipeline.vae.to(memory_format=torch.channels_last)
    if settings.quantize is not None:
        _check_float8(settings.quantize, device, where)
        quantize_float8(model, settings.quantize)
    step_cache = None
    if settings.cache is not None:
        if not isinstance(model, CacheMixin):
            raise _option_error(where, "cache", f"{kind} has no step cache in diffusers (a Flux transformer has)")
        step_cache = _step_cache(model, settings.cache)
        try:
            model.enable_cache(step_cache.config)
        except (ValueError, TypeError) as exc:  # a kind this transformer's blocks are not registered for
            raise _option_error(where, "cache", f"{kind} refuses a {settings.cache.kind} cache: {exc}") from exc
    compiled = None
    if settings.compile is not None:
        compiled = _compile(model, settings.compile, where, compile_backend)
    options = SpeedOptions(
        dtype=str(dtype).removeprefix("torch."),
        quantize=settings.quantize,
        cache=settings.cache.label() if settings.cache is not None else None,
        compile=compiled,
        fuse_qkv=settings.fuse_qkv,
        channels_last=settings.channels_last,
    )
    return options, step_cache


# torchao's config for each `quantize` kind: float8 weights with float8 activations (scaled per row at each call,
# float8 matmuls), or float8 weights alone (dequantized to the model's dtype at each call: memory, not speed).
_FLOAT8_CONFIGS = {"fp8": "Float8DynamicActivationFloat8WeightConfig", "fp8_weight_only": "Float8WeightOnlyConfig"}
TORCHAO_INSTALL = "install it with `pip install --no-deps 'torchao>=0.18,<0.19'` (the package's `fp8` extra)"


def _check_float8(kind: str, device: str, where: str) -> None:
    """torchao importable, a CUDA device, and for float8 matmuls one that has them; else an error naming the field."""
    try:
        importlib.import_module("torchao.quantization")
    except ImportError as exc:
        message = f"{kind} needs torchao, which does not import ({exc}): {TORCHAO_INSTALL}"
        raise _option_error(where, "quantize", message) from exc
    if not device.startswith("cuda"):
        message = f"{kind} needs a CUDA device (torchao's float8 layers run on a GPU); this model is on {device}"
        raise _option_error(where, "quantize", message)
    major, minor = torch.cuda.get_device_capability(device)
    if kind == "fp8" and (major, minor) < (8, 9):
        message = (
            f"fp8 matmuls need compute capability 8.9 or newer (Ada, Hopper); this GPU has {major}.{minor}: "
            "use `quantize: fp8_weight_only`"
        )
        raise _option_error(where, "quantize", message)


def quantize_float8(model: Any, kind: str) -> None:
    """Every linear layer of ``model`` to torchao's float8 (in place), as ``kind`` says; no device check here."""
    quantization = importlib.import_module("torchao.quantization")
    quantization.quantize_(model, getattr(quantization, _FLOAT8_CONFIGS[kind])())


def _step_cache(model: Any, cache: StepCacheSettings) -> StepCacheRun:
    """The diffusers cache config ``cache`` asks for, in the run that feeds it each call's steps and timestep."""
    from diffusers import (
        FasterCacheConfig,
        FirstBlockCacheConfig,
        MagCacheConfig,
        PyramidAttentionBroadcastConfig,
        TaylorSeerCacheConfig,
    )
    from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS

    run = StepCacheRun(model)
    factors = next(model.parameters()).dtype  # TaylorSeer's factors in the weights' dtype, not always bfloat16
    if isinstance(cache, FirstBlockCache):
        run.config = FirstBlockCacheConfig(threshold=cache.threshold)
    elif isinstance(cache, TaylorSeerCache):
        run.config = TaylorSeerCacheConfig(
            cache_interval=cache.interval,
            disable_cache_before_step=cache.warmup,
            disable_cache_after_step=cache.until,
            max_order=cache.order,
            taylor_factors_dtype=factors,
            use_lite_mode=cache.lite,
        )
    elif isinstance(cache, MagCache):
        ratios = FLUX_MAG_RATIOS if cache.mag_ratios == MAG_RATIOS_FLUX1 else torch.tensor(cache.mag_ratios)
        run.mag_ratios = ratios.clone()
        run.config = MagCacheConfig(
            threshold=cache.threshold,
            max_skip_steps=cache.max_skip,
            retention_ratio=cache.retention,
            num_inference_steps=len(ratios),
            mag_ratios=ratios.clone(),
        )
    elif isinstance(cache, PyramidAttentionCache):
        run.watch_timesteps()
        run.config = PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=cache.skip,
            spatial_attention_timestep_skip_range=cache.timesteps,
            current_timestep_callback=run.timestep,
        )
    else:
        assert isinstance(cache, FasterCache)  # diffusers logs that it is experimental (docs/local_backend.md too)
        run.watch_timesteps()
        run.config = FasterCacheConfig(
            spatial_attention_block_skip_range=cache.skip,
            spatial_attention_timestep_skip_range=cache.timesteps,
            attention_weight_callback=lambda _module: cache.weight,
            current_timestep_callback=run.timestep,
            is_guidance_distilled=True,  # Flux: no unconditional half to skip, only attention
            tensor_format="BCHW",
        )
    return run


def _compile(model: Any, options: CompileSettings, where: str, compile_backend: str) -> str:
    """``torch.compile`` on the repeated blocks (regional) or on the whole denoiser; what the options line says."""
    with warnings.catch_warnings():  # torch's own modules still use what torch 2.13 deprecates
        warnings.filterwarnings("ignore", "`torch.jit.script_method` is deprecated", DeprecationWarning)
        importlib.import_module("torch._inductor.compile_fx")  # what compiling imports (torch.utils.mkldnn)
    # A mode is inductor's: another backend takes none.
    mode = {"mode": options.mode} if compile_backend == "inductor" else {}
    if options.scope == "whole":
        # One compiled forward for the whole denoiser, the cache's hooks included (they run outside the graph).
        model.compile(backend=compile_backend, fullgraph=options.fullgraph, dynamic=options.dynamic, **mode)
        return f"whole:{options.mode}"
    if not getattr(model, "_repeated_blocks", None):
        raise _option_error(where, "compile", f"{type(model).__name__} names no repeated blocks to compile")
    try:
        model.compile_repeated_blocks(
            backend=compile_backend, fullgraph=options.fullgraph, dynamic=options.dynamic, **mode
        )
    except ValueError as exc:  # its repeated blocks are not in this model
        raise _option_error(where, "compile", str(exc)) from exc
    return options.mode


def _source(name: str, path: str) -> str:
    """What ``from_pretrained`` reads: a built-in model's directory (built when absent), a directory, or a hub id."""
    if path.startswith(BUILTIN_PREFIX):
        kind = path.removeprefix(BUILTIN_PREFIX)
        if kind not in TINY_KINDS:
            raise GatewayError(
                ErrorCode.MODEL_NOT_FOUND,
                f"local model {name!r}: there is no built-in model {path!r}; "
                f"the built-in ones are {', '.join(BUILTIN_PREFIX + kind for kind in TINY_KINDS)}",
            )
        return str(ensure_tiny(kind))
    directory = Path(path).expanduser()
    if directory.is_dir():
        if not (directory / "model_index.json").is_file():
            raise GatewayError(
                ErrorCode.MODEL_NOT_FOUND,
                f"local model {name!r}: {directory.resolve()} holds no diffusers model (no model_index.json); "
                f"save one there with `pipeline.save_pretrained(...)` or `hf download <id> --local-dir ...`",
            )
        return str(directory)
    if not _HUB_ID.match(path):
        raise _not_found(name, path, path)
    return path


def _not_found(name: str, path: str, source: str) -> GatewayError:
    looks_like_id = bool(_HUB_ID.match(path)) and not path.startswith((".", "/", "~"))
    where = f"no directory {Path(path).expanduser().resolve()}"
    if looks_like_id:
        where += f" and no Hugging Face cache entry for {source!r} (models are never downloaded at run time)"
    return GatewayError(
        ErrorCode.MODEL_NOT_FOUND,
        f"local model {name!r} is not available: {where}. Put a diffusers model in that directory "
        f"(`pipeline.save_pretrained(dir)`, or `hf download <id> --local-dir dir` on a machine with network), "
        f"or fetch a Hugging Face id into the cache (`hf download <id>`, HF_HOME to move it) and set `path` to the id",
    )


def _is_missing(exc: BaseException) -> bool:
    """Whether a loader's error means "not on disk" (rather than a broken model)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, LocalEntryNotFoundError | OfflineModeIsEnabled | HFValidationError | FileNotFoundError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _family(pipeline: Pipeline) -> str:
    name = type(pipeline).__name__
    if "Flux" in name:
        return "flux"
    if "StableDiffusionXL" in name:
        return "sdxl"
    if "StableDiffusion" in name:
        return "sd"
    return "other"


def _rules(name: str, settings: LocalModelSettings, pipeline: Pipeline) -> ModelRules:
    family = _family(pipeline)
    scale = int(getattr(pipeline, "vae_scale_factor", 8))
    size, steps, guidance = TINY_DEFAULTS if settings.path.startswith(BUILTIN_PREFIX) else FAMILY_DEFAULTS[family]
    return ModelRules(
        name=name,
        family=family,
        multiple=scale * 2 if family == "flux" else scale,  # Flux packs 2x2 latents into one token
        max_pixels=settings.max_pixels,
        max_input_pixels=settings.max_input_pixels,
        max_steps=settings.max_steps,
        default_size=settings.default_size or size,
        default_steps=min(settings.default_steps or steps, settings.max_steps),
        default_guidance=settings.default_guidance if settings.default_guidance is not None else guidance,
        strength=settings.strength,
        batch_pixels=settings.batch_pixels,
    )
