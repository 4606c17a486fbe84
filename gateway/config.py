"""The gateway's configuration: YAML with ``${ENV}`` values, checked by msgspec at start.

An error names the file and the field (``$.providers.mel.base_url``) so that a bad
config never gets as far as serving.
"""

from __future__ import annotations

import base64
import enum
import ipaddress
import os
import re
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

import msgspec
import yaml

from gateway.accounting import BudgetConfig, PriceConfig, currency_problems
from schemas.canonical import Operation
from schemas.local import LocalBackendSettings
from schemas.policy import ProviderPolicy, RateLimit
from schemas.sustainability import SiteFactors

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "AdminKey",
    "ConfigError",
    "DirectoryStoreConfig",
    "GatewayConfig",
    "ImageStoreConfig",
    "JobsConfig",
    "KeyWebhooks",
    "ModelConfig",
    "OpenAIProvider",
    "ProviderConfig",
    "S3StoreConfig",
    "TargetConfig",
    "WebhooksConfig",
    "load_config",
    "parse_config",
    "require_models",
]

DEFAULT_CONFIG_PATH = Path(__file__).with_name("default.yaml")
# Names the config file for server worker processes started by `image-gateway serve --workers N`.
CONFIG_ENV = "IMAGE_GATEWAY_CONFIG"
DEFAULT_MAX_BODY_BYTES = 25 * 1024 * 1024
DEFAULT_MAX_IMAGE_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_RESPONSE_BYTES = 128 * 1024 * 1024
DEFAULT_MAX_INPUT_IMAGE_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_INFLIGHT_BODY_BYTES = 512 * 1024 * 1024

Seconds = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
# Watt-hours one image takes, for providers that report no energy of their own (an estimate).
WattHours = Annotated[float, msgspec.Meta(gt=0, le=100_000)]
MAX_PRESIGNED_TTL_S = 7 * 86400  # SigV4's limit on a presigned URL


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and the field.

    ``errors`` holds every problem found (one line each), so that one run of
    ``check-config`` shows them all instead of one per edit.
    """

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or [message]


class FieldValueError(ValueError):
    """A check in a ``__post_init__`` that knows its field: the error's path then names the field, not the struct."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


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
    price: PriceConfig | None = None  # None: unpriced (gateway/accounting.py)
    energy_wh_per_image: WattHours | None = None  # overrides the provider's estimate for this target


RESPONSE_FORMATS = ("url", "b64_json")  # a model's default_response_format


class ResultCache(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Keep this model's seeded results (gateway/dedup.py): only for backends known to be deterministic."""

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


class _StoreConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="kind"):
    """What every image store has: how long an image lives, and where clients reach this gateway."""

    ttl_seconds: PositiveInt = 3600
    # Signs image names; replicas that share a store must share it. Empty: random per process.
    secret: str = ""
    # The URL prefix clients reach this gateway at; empty: taken from each request.
    public_base_url: str = ""


class DirectoryStoreConfig(_StoreConfig, tag="directory"):
    """Images as files in a directory (replicas share it over a ReadWriteMany volume)."""

    path: str = "var/images"


class S3StoreConfig(_StoreConfig, tag="s3"):
    """Images in an S3-compatible bucket (AWS S3, R2, MinIO, SeaweedFS, GCS's XML API).

    Credentials: ``access_key_id``/``secret_access_key`` (write them as ``${ENV}``), else the
    standard AWS environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    ``AWS_SESSION_TOKEN``, web identity) and instance credentials.
    """

    bucket: Annotated[str, msgspec.Meta(min_length=3)]
    prefix: str = "images/"
    endpoint_url: str = ""  # empty: AWS S3 in ``region``
    region: str = ""  # empty: AWS_REGION / AWS_DEFAULT_REGION, else us-east-1
    access_key_id: str = ""
    secret_access_key: str = ""
    # presigned: clients get a presigned GET URL of the bucket, expiring with ttl_seconds (no gateway bandwidth);
    # gateway: clients get this gateway's signed URL, and any replica serves it from the bucket.
    url_mode: Literal["presigned", "gateway"] = "presigned"
    timeout_s: Seconds = 10.0  # per storage call; an unreachable store fails URL answers after this, not later

    def __post_init__(self) -> None:
        if self.endpoint_url and not re.match(r"^https?://[^/\s]+", self.endpoint_url):
            raise FieldValueError("endpoint_url", "endpoint_url must be an http:// or https:// URL")
        if self.url_mode == "presigned" and self.ttl_seconds > MAX_PRESIGNED_TTL_S:
            raise FieldValueError("ttl_seconds", "presigned URLs live 7 days at most (604800 s)")
        if bool(self.access_key_id) != bool(self.secret_access_key):
            raise FieldValueError("secret_access_key", "give both access_key_id and secret_access_key, or neither")
        if self.url_mode == "gateway" and not self.secret:
            raise FieldValueError(
                "secret", "url_mode gateway needs image_store.secret: every replica signs and checks image URLs with it"
            )
        if self.prefix and not self.prefix.endswith("/"):
            self.prefix += "/"
        self.prefix = self.prefix.lstrip("/")


# `kind` picks the store; without one, the directory store (configs written before the S3 store).
ImageStoreConfig = DirectoryStoreConfig | S3StoreConfig


class DedupConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One generation for identical seeded requests (gateway/dedup.py)."""

    enabled: bool = True  # concurrent identical seeded requests share one generation
    across_keys: bool = False  # share (and answer from the cache) across inbound keys too
    memory_cache_bytes: PositiveInt = 16 * 1024 * 1024  # the in-process result cache's bound, without Redis


class IdempotencyConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Retries with an ``Idempotency-Key`` get the first request's answer (gateway/idempotency.py)."""

    enabled: bool = True
    # How long a key's answer is replayed; an answer with images at most image_store.ttl_seconds (its images'
    # life in the store). The draft suggests 24 h.
    ttl_s: Seconds = 86_400.0
    max_key_chars: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 255  # a longer Idempotency-Key is a 400
    memory_entries: PositiveInt = 10_000  # the in-process table's bound, without Redis (oldest answers out first)


class ServerConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The listening socket and the limits on what a client may send."""

    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    max_body_bytes: PositiveInt = DEFAULT_MAX_BODY_BYTES
    # Bytes of request bodies held at once by one process; past it a request is `overloaded` (503)
    # before its body is read, so a flood of large bodies cannot grow the process without bound.
    max_inflight_body_bytes: PositiveInt = DEFAULT_MAX_INFLIGHT_BODY_BYTES
    max_input_images: PositiveInt = 16
    max_input_image_bytes: PositiveInt = DEFAULT_MAX_INPUT_IMAGE_BYTES
    max_prompt_chars: PositiveInt = 32_000  # a longer prompt or negative prompt is refused (400); OpenAI's limit
    request_deadline_s: Seconds = 120.0  # no chain of retries and fallbacks outlives it
    # The HTTP client every adapter sends through (adapters/upstream.py): aiohttp's. `raw` (a client
    # of our own), `httpx` and `httpx-aiohttp` are gone: docs/benchmarks.md, "The transport decision".
    upstream_transport: Literal["aiohttp"] = "aiohttp"
    # How often each process asks the providers that report readiness (the local one: its models, its workers)
    # whether they can serve: image_gateway_provider_ready and /ready's `providers` (gateway/provider_health.py).
    provider_probe_interval_s: Seconds = 10.0
    shutdown_grace_s: Seconds = 30.0  # on SIGTERM: stop accepting, let requests in flight finish this long
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_prompts: bool = False
    # Who may read /metrics (it names inbound keys and their spend): `admin_key` (Authorization: Bearer <an
    # admin key>, else 401), `open`, or null: `admin_key` when `auth.admin_keys` has one, else `open`.
    metrics_access: Literal["open", "admin_key"] | None = None
    dedup: DedupConfig = msgspec.field(default_factory=DedupConfig)
    idempotency: IdempotencyConfig = msgspec.field(default_factory=IdempotencyConfig)
    # Connections (gateway/serving.py, gateway/inbound.py): what a client may hold before and while it sends.
    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 64 * 1024  # request line + headers; past it a 431
    header_timeout_s: Seconds = 10.0  # from connecting (or the previous answer) to complete headers; else a 408
    keep_alive_timeout_s: Seconds = 5.0  # an idle kept-alive connection is closed after this long
    body_idle_timeout_s: Seconds = 15.0  # a body that sends nothing for this long is a 408
    body_min_bytes_per_s: Annotated[int, msgspec.Meta(ge=0)] = 16 * 1024  # average pace of a body after its first
    # body_idle_timeout_s (0: none); slower is a 408
    # The most of max_inflight_body_bytes one key (one client address on an open gateway) may hold at once.
    max_inflight_body_share: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5

    def __post_init__(self) -> None:
        if self.max_inflight_body_bytes < self.max_body_bytes:
            raise ValueError("max_inflight_body_bytes must be at least max_body_bytes (one whole body must fit)")


class RedisConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The Redis every replica shares (rate limits, cooldowns). Without a url, both live in memory."""

    url: str = ""
    # When a configured Redis is unreachable: "open" keeps serving on the in-memory limiter,
    # "closed" refuses with `overloaded` until it is back.
    on_failure: Literal["open", "closed"] = "open"
    timeout_s: Seconds = 0.25
    key_prefix: str = "igw:"
    # How often each process pings Redis, so that a lost Redis shows (image_gateway_redis_up, a log line)
    # even when nothing else calls it for a while (no rate limits: Redis only for cooldowns).
    probe_interval_s: Seconds = 5.0
    # A Redis whose maxmemory-policy evicts keys (anything but `noeviction`) would drop accepted jobs, job records,
    # budgets and limits without a trace: `refuse` stops the gateway at start, `warn` logs it at error level and
    # serves (gateway/redis_health.py, check_eviction_policy).
    evicting_policy: Literal["refuse", "warn"] = "refuse"


_WHSEC = re.compile(r"^whsec_([A-Za-z0-9+/]+={0,2})$")
# A host an allow-list entry matches: a name (`hooks.example.com`), every name under a domain
# (`*.example.com`), or an IP address.
HOST_PATTERN = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class KeyWebhooks(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Webhooks of one inbound key (gateway/webhooks.py): the signing secret, a default URL, the hosts it may call."""

    secret: str  # Standard Webhooks form: whsec_<base64 of 24-64 random bytes>
    url: str = ""  # the default when a job names no X-Webhook-URL; empty: none
    allow_hosts: list[str] = []  # hosts an X-Webhook-URL may name; the default url's host always may
    allow_private: bool = False  # let this key call private, loopback and link-local addresses
    allow_http: bool = False  # let this key call http:// URLs (https only otherwise)

    def __post_init__(self) -> None:
        match = _WHSEC.match(self.secret)
        try:
            key = base64.b64decode(match.group(1), validate=True) if match else b""
        except ValueError:
            key = b""
        if not 24 <= len(key) <= 64:
            raise FieldValueError("secret", "secret must be whsec_<base64 of 24 to 64 bytes> (Standard Webhooks)")
        for index, host in enumerate(self.allow_hosts):
            if not (HOST_PATTERN.match(host) or _is_ip(host)):
                raise FieldValueError(
                    f"allow_hosts[{index}]",
                    "an allow_hosts entry is a lower-case host name, *.domain or an IP address (no scheme or port)",
                )
        if self.url:
            parts = urlsplit(self.url)
            if parts.scheme not in ("https", "http") or not parts.hostname:
                raise FieldValueError("url", "url must be an https:// URL")
            if parts.scheme == "http" and not self.allow_http:
                raise FieldValueError("url", "url is http://: give allow_http: true, or use https://")


class WebhooksConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How webhooks are delivered (every key's): attempts, backoff, timeouts."""

    attempts: PositiveInt = 8  # deliveries of one event at most, the first included
    backoff_initial_s: Seconds = 1.0  # the wait before the first retry; doubled before each next one
    backoff_max_s: Seconds = 300.0  # the longest wait between two attempts
    give_up_after_s: Seconds = 3600.0  # no retry starts later than this after the first attempt
    timeout_s: Seconds = 10.0  # one attempt, connection and answer
    resolve_timeout_s: Seconds = 2.0  # resolving a URL's host when a job names it
    # The webhooks of an open gateway (no auth.keys): every request is anonymous. null: none.
    anonymous: KeyWebhooks | None = None


class InboundKey(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A client's API key, stored as ``sha256:<hex>`` (``image-gateway hash-key`` makes one)."""

    name: str
    hash: Annotated[str, msgspec.Meta(pattern=r"^sha256:[0-9a-f]{64}$")]
    models: list[str] | None = None  # None: every model
    limits: RateLimit | None = None
    budget: BudgetConfig | None = None  # None: no budget (gateway/accounting.py)
    revoked: bool = False
    webhooks: KeyWebhooks | None = None  # null: jobs of this key cannot ask for webhooks


class AdminKey(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An operator's key for ``/console`` and ``/admin/api`` (gateway/admin.py), hashed like the inbound keys."""

    name: str
    hash: Annotated[str, msgspec.Meta(pattern=r"^sha256:[0-9a-f]{64}$")]


class AuthConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Inbound keys; with none configured the gateway is open (and says so at start)."""

    keys: list[InboundKey] = []
    default_limits: RateLimit | None = None  # for keys without limits of their own
    # Keys of the console and the admin API; none: both are served only on a loopback-bound gateway.
    admin_keys: list[AdminKey] = []


class JobsConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Async jobs (``Prefer: respond-async``): in Redis when ``redis.url`` is set, else in this process."""

    consumers: PositiveInt = 4  # jobs one process runs at once
    ttl_s: PositiveInt = 86400  # a job's record lives this long after it was submitted
    claim_after_s: Seconds = 30.0  # a job whose process stopped answering is run by another after this
    max_runs: PositiveInt = 3  # runs (claims included) before a job that keeps killing its process fails
    max_wait_s: PositiveInt = 60  # the longest `Prefer: wait=N` honoured; a longer wait is cut to it
    max_queued: PositiveInt = 10_000  # jobs waiting at once; past it a submit is `overloaded` (503)
    # The requests (images included) of jobs not ended yet, counted in Redis with every replica's (or in this
    # process): past the total a submit is `overloaded` (503), past one key's share `rate_limited` (429).
    max_queued_bytes: PositiveInt = 256 * 1024 * 1024
    max_queued_bytes_per_key: PositiveInt = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_queued_bytes_per_key > self.max_queued_bytes:
            raise ValueError("max_queued_bytes_per_key must be at most max_queued_bytes")


class GatewayConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The whole configuration file."""

    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    redis: RedisConfig = msgspec.field(default_factory=RedisConfig)
    jobs: JobsConfig = msgspec.field(default_factory=JobsConfig)
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    image_store: ImageStoreConfig = msgspec.field(default_factory=DirectoryStoreConfig)
    providers: dict[str, ProviderConfig] = {}
    models: list[ModelConfig] = []
    webhooks: WebhooksConfig = msgspec.field(default_factory=WebhooksConfig)
    # The site's grid, PUE and water factors that turn energy into carbon and water (docs: "Energy and carbon").
    sustainability: SiteFactors = msgspec.field(default_factory=SiteFactors)

    def __post_init__(self) -> None:
        problems = cross_check(self)
        if problems:
            raise ValueError("; ".join(problems))
        declared_operations(self)


def declared_operations(config: GatewayConfig) -> None:
    """Targets on a provider that declares its ``operations`` (``kind: openai``) do only those: a request
    for another is skipped without a call, as a target's own ``operations`` says."""
    for model in config.models:
        for target in model.targets:
            provider = config.providers[target.provider]
            if isinstance(provider, OpenAIProvider):
                wanted = target.operations if target.operations is not None else provider.operations
                target.operations = [operation for operation in wanted if operation in provider.operations]


def cross_check(config: GatewayConfig) -> list[str]:
    """What no single section can see: names used twice, targets naming providers that are not there."""
    problems: list[str] = []
    names = [key.name for key in config.auth.keys]
    if len(names) != len(set(names)):
        problems.append("two inbound keys under `auth.keys` share a name - at `$.auth.keys`")
    admins = [key.name for key in config.auth.admin_keys]
    if len(admins) != len(set(admins)):
        problems.append("two admin keys under `auth.admin_keys` share a name - at `$.auth.admin_keys`")
    if config.server.metrics_access == "admin_key" and not admins:
        problems.append("`metrics_access: admin_key` needs an admin key under `auth.admin_keys` - at `$.server`")
    models = [(model.name, model.aliases, [target.provider for target in model.targets]) for model in config.models]
    return problems + reference_problems(set(config.providers), models) + currency_problems(config)


def reference_problems(providers: set[str], models: list[tuple[str, list[str], list[str]]]) -> list[str]:
    """Model names or aliases used twice, and targets naming a provider that is not under ``providers``.

    ``models`` holds (name, aliases, each target's provider) for ``$.models[i]``: the checked config gives them,
    and so does a config whose parts have errors (``_raw_references``), so that one run reports both kinds.
    """
    problems: list[str] = []
    seen: set[str] = set()
    for index, (model, aliases, targets) in enumerate(models):
        for name in (model, *aliases):
            if name in seen:
                problems.append(f"model name or alias {name!r} is used twice - at `$.models[{index}]`")
            seen.add(name)
        for number, provider in enumerate(targets):
            if provider not in providers:
                known = ", ".join(repr(name) for name in sorted(providers)) or "none"
                problems.append(
                    f"model {model!r} targets provider {provider!r}, which is not under `providers` (there: {known})"
                    f" - at `$.models[{index}].targets[{number}].provider`"
                )
    return problems


def _raw_references(raw: dict[str, Any]) -> list[str]:
    """``reference_problems`` read off the YAML as parsed, for a config whose parts did not all convert."""
    providers = raw.get("providers")
    names = {str(name) for name in providers} if isinstance(providers, dict) else set()
    models: list[tuple[str, list[str], list[str]]] = []
    listed = raw.get("models")
    for entry in listed if isinstance(listed, list) else []:
        model: dict[str, Any] = entry if isinstance(entry, dict) else {}
        aliases: list[Any] = model["aliases"] if isinstance(model.get("aliases"), list) else []
        targets: list[Any] = model["targets"] if isinstance(model.get("targets"), list) else []
        models.append((
            str(model.get("name", "")),
            [str(alias) for alias in aliases],
            [str(target["provider"]) for target in targets if isinstance(target, dict) and "provider" in target],
        ))
    return reference_problems(names, models)


def require_models(config: GatewayConfig, source: str = "<config>") -> None:
    """A gateway with no models answers every request ``model_not_found``: refuse to check or serve it.

    (A GPU worker's config needs none: it serves its ``kind: local`` providers.)
    """
    if not config.models:
        message = (
            f"{source}: no models under `models`, so every request would be answered model_not_found; "
            "add at least one (see examples/emulators.yaml) - at `$.models`"
        )
        raise ConfigError(message)


_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(value: Any, path: str, environ: dict[str, str], errors: list[str]) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of the parsed YAML; a missing VAR goes to ``errors``."""
    if isinstance(value, dict):
        return {key: _expand(item, f"{path}.{key}", environ, errors) for key, item in value.items()}
    if isinstance(value, list):
        return [_expand(item, f"{path}[{index}]", environ, errors) for index, item in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        errors.append(f"environment variable {name} is not set (needed at `{path}`)")
        return ""

    return _ENV_RE.sub(substitute, value)


_AT = re.compile(r" - at `\$([^`]*)`$")


def _convert_at(value: Any, kind: Any, path: str, errors: list[str]) -> Any:
    """Check ``value`` alone as ``kind``; an error is noted with its full path from the file's root.

    msgspec elides dict keys (``$.providers[...]``) and names a ``__post_init__`` error at
    its struct, so each part is converted by itself and the path is rebuilt here. A bad choice
    (a ``Literal`` or an enum) says which values are allowed.
    """
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _AT.search(message)
        inner = match.group(1) if match else ""
        message = message[: match.start()] if match else message
        if isinstance(exc.__cause__, FieldValueError):
            inner += f".{exc.__cause__.field}"
        choices = _choices(kind)
        if choices and not inner:
            message += f" (one of: {', '.join(repr(choice) for choice in choices)})"
        errors.append(f"{message} - at `{path}{inner}`")
        return None


def _unwrap(kind: Any) -> Any:
    return get_args(kind)[0] if get_origin(kind) is Annotated else kind


def _is_struct(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, msgspec.Struct)


def _choices(kind: Any) -> list[Any]:
    """The values a ``Literal`` or an enum allows (through ``Annotated`` and ``| None``); [] for any other type."""
    kind = _unwrap(kind)
    if get_origin(kind) is Literal:
        return list(get_args(kind))
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return [member.value for member in kind]
    if get_origin(kind) in (Union, types.UnionType):
        return [choice for arg in get_args(kind) if arg is not type(None) for choice in _choices(arg)]
    return []


def _collect(value: Any, kind: Any, path: str, errors: list[str]) -> bool:
    """Check ``value`` as ``kind`` field by field, so that every error in it is reported at once.

    msgspec stops at the first error of a struct; here each field of a struct (each item of a list,
    each value of a dict, the member a tagged union's ``kind`` picks) is checked by itself, then the
    whole part is converted once its fields are sound (for its own constraints and ``__post_init__``).
    """
    before = len(errors)
    inner = _unwrap(kind)
    origin = get_origin(inner)
    if _is_struct(inner) and isinstance(value, dict):
        config = inner.__struct_config__
        fields = {field.encode_name: field for field in msgspec.structs.fields(inner)}
        if config.forbid_unknown_fields:
            for key in value:
                if key not in fields and key != config.tag_field:
                    errors.append(f"Object contains unknown field `{key}` - at `{path}`")
        for name, field in fields.items():
            if name in value:
                _collect(value[name], field.type, f"{path}.{name}", errors)
            elif field.required:
                errors.append(f"Object missing required field `{name}` - at `{path}`")
    elif origin in (Union, types.UnionType) and value is not None:
        members = [arg for arg in get_args(inner) if arg is not type(None)]
        tagged = [member for member in members if _is_struct(member) and member.__struct_config__.tag_field]
        if tagged and isinstance(value, dict):
            tag_field = tagged[0].__struct_config__.tag_field
            by_tag = {member.__struct_config__.tag: member for member in tagged}
            tag = value.get(tag_field)
            if tag in by_tag:
                _collect(value, by_tag[tag], path, errors)
            else:
                allowed = ", ".join(repr(name) for name in by_tag)
                errors.append(f"`{tag_field}` must be one of: {allowed}; got {tag!r} - at `{path}.{tag_field}`")
        elif len(members) == 1:
            _collect(value, members[0], path, errors)
    elif origin is list and isinstance(value, list):
        (item,) = get_args(inner)
        for index, element in enumerate(value):
            _collect(element, item, f"{path}[{index}]", errors)
    elif origin is dict and isinstance(value, dict):
        item = get_args(inner)[1]
        for key, element in value.items():
            _collect(element, item, f"{path}.{key}", errors)
    if len(errors) == before:
        _convert_at(value, kind, path, errors)
    return len(errors) == before


def _check_parts(raw: dict[str, Any], errors: list[str]) -> None:
    """Check each section, each provider and each model by itself, so that every error is reported."""
    sections = {
        "server": ServerConfig,
        "redis": RedisConfig,
        "jobs": JobsConfig,
        "auth": AuthConfig,
        "image_store": ImageStoreConfig,
        "webhooks": WebhooksConfig,
        "sustainability": SiteFactors,
    }
    for key, value in raw.items():
        if key in sections:
            _collect(value, sections[key], f"$.{key}", errors)
        elif key == "providers":
            _collect(value, dict[str, ProviderConfig], "$.providers", errors)
        elif key == "models":
            _collect(value, list[ModelConfig], "$.models", errors)
        else:
            errors.append(f"Object contains unknown field `{key}` - at `$`")


def _default_store_kind(raw: Any) -> Any:
    """An ``image_store`` without ``kind`` is the directory store."""
    store = raw.get("image_store") if isinstance(raw, dict) else None
    if isinstance(store, dict) and "kind" not in store:
        raw["image_store"] = {"kind": "directory", **store}
    return raw


def parse_config(text: str, source: str = "<string>", environ: dict[str, str] | None = None) -> GatewayConfig:
    """Parse and check YAML text; a ``ConfigError`` names ``source`` and every field at fault."""
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    errors: list[str] = []
    expanded = _default_store_kind(_expand(raw, "$", dict(os.environ) if environ is None else environ, errors))
    if not isinstance(expanded, dict):
        errors.append(f"Expected `object`, got `{type(expanded).__name__}` - at `$`")
    else:
        unset = [error.split("(needed at ", 1)[1][:-1] for error in errors]  # a value left empty: no second error
        checked: list[str] = []
        _check_parts(expanded, checked)
        errors += [error for error in checked if not any(error.endswith(f" - at {path}") for path in unset)]
        if errors:  # the cross-references are checked on the whole config below; with errors, on the YAML itself
            errors += _raw_references(expanded)
    if not errors:
        try:
            return msgspec.convert(expanded, GatewayConfig)
        except msgspec.ValidationError as exc:
            errors += str(exc).removesuffix(" - at `$`").split("; ")
    lines = [f"{source}: {error}" for error in errors]
    raise ConfigError("\n".join(lines), lines)


def load_config(path: str | Path | None = None) -> GatewayConfig:
    """Load the file at ``path`` (the built-in default when None)."""
    path = Path(path) if path else DEFAULT_CONFIG_PATH
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from exc
    return parse_config(text, str(path))
