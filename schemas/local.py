"""Settings of the local diffusers backend: a ``kind: local`` provider in the gateway's config.

Plain msgspec Structs, shared by the gateway's config, the ``local`` adapter and the
engine (so they live in ``schemas``, which all of them may import): a gateway-only install
reads a config that names a local provider without torch or diffusers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from schemas.policy import ProviderPolicy, RetryPolicy
from schemas.sustainability import SiteFactors

__all__ = [
    "CACHE_FAMILIES",
    "DEFAULT_BATCH_PIXELS",
    "DEFAULT_MAX_INPUT_PIXELS",
    "MAX_INPUT_PIXELS_CEILING",
    "CompileSettings",
    "EnergyMeterSettings",
    "LocalBackendSettings",
    "LocalModelSettings",
    "StepCacheSettings",
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


class StepCacheSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A step cache on the model's denoiser: steps whose result is predicted from earlier ones skip work.

    ``first_block``: diffusers' First Block Cache. Each step runs the first transformer block; when its
    output moved less than ``threshold`` (mean absolute relative change) since the last full step, the
    other blocks are skipped and their last residual reused. ``threshold: 0`` never skips (exact).
    """

    kind: Literal["first_block"] = "first_block"
    threshold: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.05


class CompileSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Regional compilation: ``torch.compile`` on each repeated block of the denoiser, once at load.

    The warm-up before the model reports ready runs the compiled blocks once (at the default size).
    """

    mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    fullgraph: bool = False
    # A new image size recompiles for a size-generic graph instead of one graph per size.
    dynamic: bool | None = None


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
    # A step cache (Flux-family models only); None: every step computes every block.
    cache: StepCacheSettings | None = None
    # Regional compilation of the denoiser's repeated blocks; None: eager.
    compile: CompileSettings | None = None
    # One matmul for the query, key and value of each attention (``fuse_qkv_projections``).
    fuse_qkv: bool = False
    # The denoiser and VAE in channels-last memory format (convolutions: SD and SDXL's UNet, every VAE).
    channels_last: bool = False
    # This model's dtype on cuda; None: the provider's `dtype`. The CPU always computes in float32.
    dtype: Literal["bfloat16", "float16", "float32"] | None = None

    def __post_init__(self) -> None:
        family = _BUILTIN_FAMILIES.get(self.path) or _declared_family(self.path)
        if self.cache is not None and family is not None and family not in CACHE_FAMILIES:
            raise ValueError(
                f"`cache`: model {self.path!r} is an {family.upper()} model, whose denoiser has no step cache "
                f"in diffusers (a {', '.join(sorted(f.upper() for f in CACHE_FAMILIES))} model's transformer has); "
                "remove `cache`"
            )
        if self.cache is not None and self.compile is not None:
            # diffusers' cache hooks wrap every block's forward in one shared function: regional compilation
            # recompiles it per block, past torch's recompile limit, and the blocks fall back to eager.
            raise ValueError(
                "`compile`: regional compilation does not combine with `cache` (its hooks make every block a "
                "recompile of one function, past torch.compile's limit, so the blocks run eager); choose one"
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
