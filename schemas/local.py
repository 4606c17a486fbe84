"""Settings of the local diffusers backend: a ``kind: local`` provider in the gateway's config.

Plain msgspec Structs, shared by the gateway's config, the ``local`` adapter and the
engine (so they live in ``schemas``, which all of them may import): a gateway-only install
reads a config that names a local provider without torch or diffusers.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec

from schemas.policy import ProviderPolicy, RetryPolicy
from schemas.sustainability import SiteFactors

__all__ = [
    "DEFAULT_MAX_INPUT_PIXELS",
    "MAX_INPUT_PIXELS_CEILING",
    "EnergyMeterSettings",
    "LocalBackendSettings",
    "LocalModelSettings",
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
    request to those worker servers (``image-gateway worker``), which run the models of
    their own config.
    """

    models: dict[str, LocalModelSettings] = {}
    workers: list[str] = []
    # The credential between the gateway and its workers (write it as `${WORKER_TOKEN}`): the gateway sends it
    # as `Authorization: Bearer` to each of `workers`; a worker (`image-gateway worker`) serving this provider's
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
