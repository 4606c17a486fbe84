"""Settings of the local diffusers backend: a ``kind: local`` provider in the gateway's config.

Plain msgspec Structs, shared by the gateway's config, the ``local`` adapter and the
engine (so they live in ``schemas``, which all of them may import): a gateway-only install
reads a config that names a local provider without torch or diffusers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal, get_args

import msgspec

from schemas.policy import ProviderPolicy, RetryPolicy
from schemas.sustainability import SiteFactors

__all__ = [
    "CACHE_FAMILIES",
    "DEFAULT_BATCH_PIXELS",
    "DEFAULT_MAX_INPUT_PIXELS",
    "MAG_RATIOS_FLUX1",
    "MAX_INPUT_PIXELS_CEILING",
    "STEP_CACHE_KINDS",
    "CompileSettings",
    "EnergyMeterSettings",
    "FasterCache",
    "FirstBlockCache",
    "LocalBackendSettings",
    "LocalModelSettings",
    "MagCache",
    "PyramidAttentionCache",
    "StepCacheSettings",
    "TaylorSeerCache",
    "WorkerTimeouts",
]

# The most pixels an input image (or mask) of an edit or variation may declare in its header, by
# default: 4096x4096, about 50 MB once decoded as RGB. Checked before any pixel is decoded.
DEFAULT_MAX_INPUT_PIXELS = 4096 * 4096
# The most `max_input_pixels` may be set to: 8192x8192, about 200 MB decoded (Pillow's own
# decompression-bomb warning starts above it).
MAX_INPUT_PIXELS_CEILING = 8192 * 8192
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]
Fraction = Annotated[float, msgspec.Meta(gt=0, le=1)]
# The shared secret between the gateway and its workers: empty (none), or 16 to 4096 printable ASCII
# characters without spaces (it travels in `Authorization: Bearer`).
WorkerToken = Annotated[str, msgspec.Meta(pattern=r"^([\x21-\x7e]{16,4096})?\Z")]
# `auto` (cuda when present, else cpu), `cpu`, `cuda` or one GPU such as `cuda:1`.
Device = Annotated[str, msgspec.Meta(pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")]


# The most pixels one pipeline call draws, summed over its images, by default: two 1024x1024 images, sixteen at
# 256x256 (``max_batch_size`` caps the count). Set per model (``batch_pixels``) from bench/local.py's figures.
DEFAULT_BATCH_PIXELS = 2 * 1024 * 1024
# The families whose denoiser is a diffusers transformer with ``enable_cache`` (``CacheMixin``): Flux. The
# UNets of SD and SDXL have none. Known from a built-in model's name, else from its model_index.json.
CACHE_FAMILIES = frozenset({"flux"})
_BUILTIN_FAMILIES = {"builtin:tiny-sd": "sd", "builtin:tiny-sdxl": "sdxl", "builtin:tiny-flux": "flux"}


Threshold = Annotated[float, msgspec.Meta(ge=0, le=1)]
# A range of the scheduler's timesteps (1000 the noisiest, 0 the clean image), both ends excluded.
TimestepRange = tuple[float, float]


class _StepCache(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="kind"):
    """A step cache on the model's denoiser (diffusers' ``transformer.enable_cache``): work whose result is
    predicted from earlier steps is skipped. ``kind`` names which; each kind has its own fields."""

    @property
    def exact(self) -> bool:
        """Whether this setting never skips work (it draws the same image as no cache)."""
        raise NotImplementedError

    def label(self) -> str:
        """How a result records it: its kind and fields (``first_block:0.05``, ``faster:skip=2,...``)."""
        values = {key: value for key, value in msgspec.structs.asdict(self).items() if value is not None}
        if len(values) == 1:
            return f"{self.kind}:{_show(next(iter(values.values())))}"
        return f"{self.kind}:" + ",".join(f"{key}={_show(value)}" for key, value in values.items())

    @property
    def kind(self) -> str:
        return str(self.__struct_config__.tag)


def _show(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "..".join(_show(item) for item in value)
    if isinstance(value, list):
        return f"{len(value)}_values"
    return str(value)


class FirstBlockCache(_StepCache, tag="first_block"):
    """diffusers' First Block Cache (``FirstBlockCacheConfig``). Each step runs the first transformer block; when
    its output moved less than ``threshold`` (mean absolute relative change) since the last full step, the other
    blocks are skipped and their last residual reused. ``threshold: 0`` never skips (exact)."""

    threshold: Threshold = 0.05

    @property
    def exact(self) -> bool:
        return self.threshold == 0


class TaylorSeerCache(_StepCache, tag="taylor_seer"):
    """TaylorSeer (``TaylorSeerCacheConfig``): every ``interval`` steps the attention layers compute in full; in
    between their outputs are predicted by a Taylor series of order ``order`` over the last full steps. The first
    ``warmup`` steps always compute; from step ``until`` on (none: never) every step computes again. ``lite``:
    skip whole blocks and predict the denoiser's output projection instead (faster, further from the full image).
    ``interval: 1`` never predicts (exact)."""

    interval: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 5
    order: Annotated[int, msgspec.Meta(ge=1, le=4)] = 1
    warmup: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 3
    until: Annotated[int, msgspec.Meta(ge=1, le=1000)] | None = None
    lite: bool = False

    @property
    def exact(self) -> bool:
        return self.interval == 1


# The magnitude ratios diffusers publishes for FLUX.1 (dev and schnell), calibrated at 28 steps.
MAG_RATIOS_FLUX1 = "flux1"


class MagCache(_StepCache, kw_only=True, tag="mag"):
    """MagCache (``MagCacheConfig``): a step is skipped (the blocks' last residual reused) while the error its
    magnitude ratios predict, summed since the last full step, stays under ``threshold``, at most ``max_skip``
    steps in a row, never in the first ``retention`` (a fraction) of the steps. ``mag_ratios`` are the model's
    own, calibrated once (diffusers' ``MagCacheConfig(calibrate=True)``): a list (one per step, stretched to the
    steps a request asks for), or ``flux1`` for the ratios diffusers publishes for FLUX.1 dev and schnell.
    Required: a model without its ratios has no MagCache. ``max_skip: 0`` never skips (exact)."""

    threshold: Threshold = 0.06
    max_skip: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 3
    retention: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.2
    mag_ratios: Annotated[list[Annotated[float, msgspec.Meta(gt=0)]], msgspec.Meta(min_length=2)] | Literal["flux1"]

    @property
    def exact(self) -> bool:
        return self.max_skip == 0 or self.retention == 1


class PyramidAttentionCache(_StepCache, tag="pyramid_attention"):
    """Pyramid Attention Broadcast (``PyramidAttentionBroadcastConfig``): while the step's timestep lies inside
    ``timesteps``, each attention layer computes once every ``skip`` steps and reuses its last output in between.
    ``skip: 1`` never reuses (exact)."""

    skip: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 2
    timesteps: TimestepRange = (100.0, 800.0)

    @property
    def exact(self) -> bool:
        return self.skip == 1

    def __post_init__(self) -> None:
        _check_range("timesteps", self.timesteps)


class FasterCache(_StepCache, tag="faster"):
    """FasterCache (``FasterCacheConfig``, for a guidance-distilled model such as Flux): while the step's timestep
    lies inside ``timesteps``, each attention layer computes once every ``skip`` steps; in between its output is
    extrapolated from its last two (``last + (last - previous) x weight``). ``skip: 1`` never extrapolates (exact).
    diffusers marks it experimental."""

    skip: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 2
    timesteps: TimestepRange = (-1.0, 681.0)
    weight: Annotated[float, msgspec.Meta(ge=0, le=2)] = 0.5

    @property
    def exact(self) -> bool:
        return self.skip == 1

    def __post_init__(self) -> None:
        _check_range("timesteps", self.timesteps)


def _check_range(field: str, bounds: tuple[float, float]) -> None:
    low, high = bounds
    if not -1 <= low < high <= 1001:
        raise ValueError(f"`{field}`: [{low:g}, {high:g}] is not a range of timesteps: want -1 <= low < high <= 1001")


StepCacheSettings = FirstBlockCache | TaylorSeerCache | MagCache | PyramidAttentionCache | FasterCache
STEP_CACHE_KINDS = tuple(str(kind.__struct_config__.tag) for kind in get_args(StepCacheSettings))


class CompileSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``torch.compile`` on the denoiser, once at load: its repeated blocks (``scope: blocks``, regional
    compilation) or the whole denoiser in one go (``scope: whole``, the one that combines with a step cache).

    The warm-up before the model reports ready runs the compiled code once (at the default size).
    """

    mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    fullgraph: bool = False
    # A new image size recompiles for a size-generic graph instead of one graph per size.
    dynamic: bool | None = None
    scope: Literal["blocks", "whole"] = "blocks"


class LocalModelSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One diffusers pipeline: where its weights are and what it may be asked.

    ``path`` is a directory holding a diffusers model (``model_index.json``), a Hugging
    Face id already in the local cache (``stabilityai/sdxl-turbo``), or ``builtin:tiny-sd``
    (``tiny-sdxl``, ``tiny-flux``): a tiny random-weight model built on first use, which
    draws noise. The defaults left unset come from the model's family once it is loaded.
    """

    path: Annotated[str, msgspec.Meta(min_length=1)]
    max_steps: PositiveInt = 50
    max_pixels: PositiveInt = 1024 * 1024
    # The most pixels an input image or mask may declare (width x height, read from its header
    # before any decode); a larger one is refused as the client's `invalid_request`.
    max_input_pixels: Annotated[int, msgspec.Meta(ge=1, le=MAX_INPUT_PIXELS_CEILING)] = DEFAULT_MAX_INPUT_PIXELS
    # Side of the square drawn when a request names no size (an edit keeps its image's size).
    default_size: PositiveInt | None = None
    default_steps: PositiveInt | None = None
    default_guidance: Annotated[float, msgspec.Meta(ge=0)] | None = None
    # How far an edit or variation moves away from its input image (1.0: nothing of it is kept).
    strength: Fraction = 0.8
    # --- speed options (docs/local_backend.md, "Speed options"); the defaults are exact ---
    # The most pixels one pipeline call draws, its images' summed; a larger image still runs, alone.
    batch_pixels: PositiveInt = DEFAULT_BATCH_PIXELS
    # A step cache (Flux-family models only), one of STEP_CACHE_KINDS; None: every step computes every block.
    cache: StepCacheSettings | None = None
    # The denoiser compiled (its repeated blocks, or all of it); None: eager.
    compile: CompileSettings | None = None
    # One matmul for the query, key and value of each attention (``fuse_qkv_projections``).
    fuse_qkv: bool = False
    # The denoiser and VAE in channels-last memory format (convolutions: SD and SDXL's UNet, every VAE).
    channels_last: bool = False
    # This model's dtype on cuda; None: the provider's `dtype`. The CPU always computes in float32.
    dtype: Literal["bfloat16", "float16", "float32"] | None = None
    # The denoiser's linear layers in float8 (torchao), on cuda only: `fp8` (float8 weights and activations,
    # float8 matmuls: compute capability 8.9 or newer), `fp8_weight_only` (float8 weights, computing in `dtype`).
    quantize: Literal["fp8", "fp8_weight_only"] | None = None

    def __post_init__(self) -> None:
        family = _BUILTIN_FAMILIES.get(self.path) or _declared_family(self.path)
        if self.cache is not None and family is not None and family not in CACHE_FAMILIES:
            raise ValueError(
                f"`cache`: model {self.path!r} is an {family.upper()} model, whose denoiser has no step cache "
                f"in diffusers (a {', '.join(sorted(f.upper() for f in CACHE_FAMILIES))} model's transformer has); "
                "remove `cache`"
            )
        if self.cache is not None and self.compile is not None:
            if self.compile.scope == "blocks":
                # diffusers' cache hooks wrap every block's forward in one shared function: regional compilation
                # recompiles it per block, past torch's recompile limit, and the blocks fall back to eager.
                raise ValueError(
                    "`compile`: regional compilation (`scope: blocks`) does not combine with `cache` (its hooks make "
                    "every block a recompile of one function, past torch.compile's limit, so the blocks run eager); "
                    "set `compile: {scope: whole}` to compile the whole denoiser once, the cache's hooks included"
                )
            if self.compile.fullgraph:
                raise ValueError(
                    "`compile.fullgraph`: a step cache's hooks are outside the graph (diffusers excludes them from "
                    "compilation), so the denoiser cannot be one graph; remove `fullgraph` or `cache`"
                )


def _declared_family(path: str) -> str | None:
    """The family a model directory's model_index.json declares (read as JSON: no torch); None when unknown."""
    try:
        index = json.loads((Path(path).expanduser() / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # a hub id, or not there yet: checked when the model loads
    name = str(index.get("_class_name", "")) if isinstance(index, dict) else ""
    if "Flux" in name:
        return "flux"
    if "StableDiffusionXL" in name:
        return "sdxl"
    if "StableDiffusion" in name:
        return "sd"
    return None


class WorkerTimeouts(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Seconds to connect to a remote worker, and to wait for an answer (queueing included)."""

    connect: Seconds = 5.0
    read: Seconds = 300.0


class EnergyMeterSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How the engine measures the energy of each batch (docs/operations.md, "Energy and carbon").

    ``auto``: NVML's energy counter on a cuda device, else RAPL where readable, else
    ``power_watts`` x time (estimated) when set, else nothing (no energy reported).
    """

    meter: Literal["auto", "nvml", "rapl", "power", "off"] = "auto"
    # The device's draw while drawing, for the estimate (W); None: no estimate.
    power_watts: Annotated[float, msgspec.Meta(gt=0, le=100_000)] | None = None
    # Where the kernel's powercap tree is (RAPL's energy counters).
    rapl_root: str = "/sys/class/powercap"


class LocalBackendSettings(ProviderPolicy, kw_only=True, forbid_unknown_fields=True, tag_field="kind", tag="local"):
    """The local backend: in-process pipelines, or remote workers when ``workers`` lists their URLs.

    With ``workers`` empty the gateway runs ``models`` itself; otherwise it sends every
    request to those worker servers (``image-gateway-worker``), which run the models of
    their own config.
    """

    models: dict[str, LocalModelSettings] = {}
    workers: list[str] = []
    # The credential between the gateway and its workers (write it as `${WORKER_TOKEN}`): the gateway sends it
    # as `Authorization: Bearer` to each of `workers`; a worker (`image-gateway-worker`) serving this provider's
    # `models` wants it on every route but an anonymous `/health`. Empty: none (local_backend/server.py).
    worker_token: WorkerToken = ""
    # A worker with no `worker_token` beyond loopback refuses to start unless this is true (a private network
    # that nothing else can reach); the gateway's side ignores it.
    allow_unauthenticated: bool = False
    device: Device = "auto"
    # On cuda; the CPU always computes in float32.
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    # Requests waiting for the device; one more is answered `overloaded`.
    queue_size: PositiveInt = 64
    # Images one pipeline call may draw; requests that agree on model, size, steps and guidance share one.
    max_batch_size: PositiveInt = 4
    # How long the first request of a batch waits for companions, from its arrival, when they are likely
    # (it arrived while the device was busy or behind others); a lone request at an idle device starts at once.
    batch_window_ms: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    timeout: WorkerTimeouts = msgspec.field(default_factory=WorkerTimeouts)
    # One call, no retry: a full local queue answers `overloaded` at once, and the route falls back
    # to its next target, if any. Set `retry` to retry anyway (e.g. remote workers across a restart).
    retry: RetryPolicy = msgspec.field(default_factory=lambda: RetryPolicy(attempts=1))
    energy: EnergyMeterSettings = msgspec.field(default_factory=EnergyMeterSettings)
    # This provider's site (its GPUs may be elsewhere); None: the gateway's `sustainability` section.
    site: SiteFactors | None = None

    @property
    def shared_cooldown(self) -> bool:
        """Remote workers are shared by every replica; an in-process engine is each replica's own."""
        return bool(self.workers)

    def __post_init__(self) -> None:
        if not self.models and not self.workers:
            raise ValueError("a local provider needs `models` to run in-process, or `workers` to send requests to")
        for url in self.workers:
            if not re.match(r"^https?://[^/\s]+", url):
                raise ValueError(f"worker {url!r} must be an http:// or https:// URL")
        self.workers = [url.rstrip("/") for url in self.workers]
        if self.device == "cpu":
            for name, model in self.models.items():
                if model.quantize is not None:
                    raise ValueError(
                        f"`models.{name}.quantize`: {model.quantize} needs a CUDA device (torchao's float8 layers "
                        "run on a GPU), and this provider's `device` is cpu; remove `quantize` or set `device`"
                    )
