"""Providers (one tagged Struct per ``kind``) and models (their targets, in order)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec

from gateway.config.fields import (
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_RESPONSE_BYTES,
    FieldValueError,
    PositiveInt,
    PriceConfig,
    Seconds,
    WattHours,
)
from schemas.canonical import Operation
from schemas.local import LocalBackendSettings
from schemas.policy import ProviderPolicy, RateLimit


class Timeouts(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Seconds to connect to an upstream, to wait for each read (the first byte too), and for the whole answer."""

    connect: Seconds = 5.0
    read: Seconds = 120.0
    total: Seconds = 180.0


class _Provider(ProviderPolicy, kw_only=True, forbid_unknown_fields=True, tag_field="kind"):
    """What every HTTP provider needs: where it is, its key, and how long to wait (and the policy
    fields every provider has: ``retry``, ``cooldown``, ``limits``)."""

    base_url: str
    api_key: str = ""
    timeout: Timeouts = msgspec.field(default_factory=Timeouts)
    # Hosts the gateway may fetch image URLs from when a client wants base64 (the base_url's host always may).
    image_hosts: list[str] = []
    max_image_bytes: PositiveInt = DEFAULT_MAX_IMAGE_BYTES
    max_response_bytes: PositiveInt = DEFAULT_MAX_RESPONSE_BYTES
    max_concurrency: PositiveInt = 64  # calls in flight to this provider from one gateway process
    energy_wh_per_image: WattHours | None = None  # estimated energy per image (docs: "Energy and carbon")

    @property
    def call_timeout_s(self) -> float | None:
        return self.timeout.total

    def __post_init__(self) -> None:
        if not re.match(r"^https?://[^/\s]+", self.base_url):
            raise FieldValueError("base_url", "base_url must be an http:// or https:// URL")
        self.base_url = self.base_url.rstrip("/")


class MeliousProvider(_Provider, tag="melious"):
    """Melious, OpenAI-compatible generations."""


class NebulProvider(_Provider, tag="nebul"):
    """Nebul: generations, edits and variations."""


class PomeloProvider(_Provider, tag="pomelo"):
    """Pomelo; each endpoint has its own shape, so a provider entry names the one it uses."""

    endpoint: Literal["midjourney", "flux"] = "midjourney"


class NebulaBlockProvider(_Provider, tag="nebulablock"):
    """NebulaBlock; ``api`` picks the serverless ``/api/v1/images/generation`` or ``/v1/images/generate``."""

    api: Literal["serverless", "v1"] = "v1"


OpenAIExtension = Literal["seed", "steps", "guidance", "negative_prompt"]
ALL_OPERATIONS = [Operation.GENERATE, Operation.EDIT, Operation.VARIATION]
MiB = 1024 * 1024


class OpenAIProvider(_Provider, tag="openai"):
    """Any server that speaks OpenAI's Images API (OpenAI, SGLang, vLLM-Omni, LocalAI, another gateway).

    ``base_url`` is where its ``/images/...`` paths hang (``https://api.openai.com/v1``). What it
    can do is declared: ``operations`` (targets are skipped for the others, without a call),
    the ``response_format`` to ask for (null: never sent, as OpenAI's GPT image models need),
    whether it streams partial images, and which documented extensions it takes (docs/operations.md).
    """

    organization: str = ""  # sent as OpenAI-Organization when set
    project: str = ""  # sent as OpenAI-Project when set
    # More headers sent with every request (a proxy's routing headers, e.g. Portkey's x-portkey-provider).
    headers: dict[str, str] = {}
    operations: Annotated[list[Operation], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: list(ALL_OPERATIONS)
    )
    response_format: Literal["b64_json", "url"] | None = "b64_json"
    # true: a client's `stream: true` on generations and edits is passed upstream (`stream`, `partial_images`),
    # and each partial image the server sends is forwarded as it comes; false: the final image only.
    stream: bool = False
    # The documented extensions it takes (true: all four); the others are left out of what is sent.
    extensions: bool | list[OpenAIExtension] = False
    # Its name for an extension where it is not vLLM-Omni's: seed, num_inference_steps, guidance_scale, negative_prompt.
    extension_names: dict[OpenAIExtension, Annotated[str, msgspec.Meta(min_length=1)]] = {}
    max_n_per_call: Annotated[int, msgspec.Meta(ge=1, le=10)] = 10  # a larger n is split into calls (dall-e-3: 1)
    # Bounds on a streamed answer: events of any type, and the bytes of one event.
    stream_max_events: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 32
    stream_max_event_bytes: PositiveInt = 64 * MiB


ProviderConfig = (
    MeliousProvider | NebulProvider | PomeloProvider | NebulaBlockProvider | OpenAIProvider | LocalBackendSettings
)


def provider_kind(provider: ProviderConfig) -> str:
    """The ``kind`` a provider entry is written with (its tag in the config), which picks its adapter."""
    info = msgspec.inspect.type_info(type(provider))
    assert isinstance(info, msgspec.inspect.StructType), "every provider entry is a tagged Struct"
    return str(info.tag)


class TargetConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One place a model can be served: a provider and that provider's name for the model.

    The optional limits are this target's capabilities: a request beyond them skips the
    target without a call.
    """

    provider: str
    model: str
    timeout: Seconds | None = None
    max_width: PositiveInt | None = None
    max_height: PositiveInt | None = None
    max_n: PositiveInt | None = None
    operations: list[Operation] | None = None
    price: PriceConfig | None = None  # None: unpriced (gateway/admission/accounting.py)
    energy_wh_per_image: WattHours | None = None  # overrides the provider's estimate for this target


RESPONSE_FORMATS = ("url", "b64_json")  # a model's default_response_format


class ResultCache(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Keep this model's seeded results (gateway/routing/dedup.py): only for backends known to be deterministic."""

    ttl_s: Seconds  # how long a result is answered from the cache (at most the image store's ttl_seconds)


class ModelConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A model clients may ask for, by its name or any alias, and its ordered targets."""

    name: str
    targets: Annotated[list[TargetConfig], msgspec.Meta(min_length=1)]
    aliases: list[str] = []
    limits: RateLimit | None = None
    cache: ResultCache | None = None  # null: every seeded request is generated (identical ones still share)
    # How the root /v1 family answers this model when the client names no response_format: null is
    # OpenAI's `url` (its GPT image model names, gpt-image-* and chatgpt-image-*, always `b64_json`).
    default_response_format: str | None = None

    def __post_init__(self) -> None:
        if self.default_response_format not in (None, *RESPONSE_FORMATS):
            raise FieldValueError(
                "default_response_format",
                f"default_response_format must be url or b64_json, not {self.default_response_format!r}",
            )
