"""The whole config (``GatewayConfig``), its sections, and the checks across them."""

from __future__ import annotations

import base64
import ipaddress
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec

from gateway.config.fields import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_INFLIGHT_BODY_BYTES,
    DEFAULT_MAX_INPUT_IMAGE_BYTES,
    BudgetConfig,
    ConfigError,
    FieldValueError,
    PositiveInt,
    Seconds,
)
from gateway.config.providers import ModelConfig, OpenAIProvider, ProviderConfig
from gateway.config.stores import DirectoryStoreConfig, ImageStoreConfig
from schemas.policy import RateLimit
from schemas.sustainability import SiteFactors


class DedupConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One generation for identical seeded requests (gateway/routing/dedup.py)."""

    enabled: bool = True  # concurrent identical seeded requests share one generation
    across_keys: bool = False  # share (and answer from the cache) across inbound keys too
    memory_cache_bytes: PositiveInt = 16 * 1024 * 1024  # the in-process result cache's bound, without Redis


class IdempotencyConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Retries with an ``Idempotency-Key`` get the first request's answer (gateway/request/idempotency.py)."""

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
    # whether they can serve: image_gateway_provider_ready and /ready's `providers` (routing/provider_health.py).
    provider_probe_interval_s: Seconds = 10.0
    shutdown_grace_s: Seconds = 30.0  # on SIGTERM: stop accepting, let requests in flight finish this long
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_prompts: bool = False
    # Who may read /metrics (it names inbound keys and their spend): `admin_key` (Authorization: Bearer <an
    # admin key>, else 401), `open`, or null: `admin_key` when `auth.admin_keys` has one, else `open`.
    metrics_access: Literal["open", "admin_key"] | None = None
    dedup: DedupConfig = msgspec.field(default_factory=DedupConfig)
    idempotency: IdempotencyConfig = msgspec.field(default_factory=IdempotencyConfig)
    # Connections (gateway/serving.py, gateway/request/inbound.py): what a client may hold before and while it sends.
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
    # Budgets while a configured Redis is unreachable, whatever `on_failure` says of rate limits: "closed" refuses
    # a budgeted request with `overloaded` (a replica's in-memory limiter cannot know what Redis had spent, so it
    # could only overspend); "open" admits it on the in-memory limiter (spend past the budget is possible).
    budgets_on_failure: Literal["open", "closed"] = "closed"
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
    """Webhooks of one inbound key (jobs/webhooks.py): the signing secret, a default URL, the hosts it may call."""

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
    budget: BudgetConfig | None = None  # None: no budget (gateway/admission/accounting.py)
    revoked: bool = False
    webhooks: KeyWebhooks | None = None  # null: jobs of this key cannot ask for webhooks


class AdminKey(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An operator's key for ``/console`` and ``/admin/api`` (console/admin.py), hashed like the inbound keys."""

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


class ConsoleConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The console's status page: where its charts of the last hour come from (gateway/console/charts.py)."""

    # Prometheus's HTTP API (`http://prometheus:9090`, a path prefix allowed; `user:password@` sent as basic
    # auth), which scrapes every replica; empty: the charts show this process's own last hour.
    prometheus_url: str = ""
    prometheus_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 5.0  # all of one chart refresh's queries

    def __post_init__(self) -> None:
        if self.prometheus_url:
            self.prometheus_url = prometheus_url(self.prometheus_url)


def prometheus_url(url: str) -> str:
    """``url`` without a trailing slash, or a ``FieldValueError`` naming ``prometheus_url``."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a port that is not a number raises here
    except ValueError as exc:
        raise FieldValueError("prometheus_url", f"prometheus_url {url!r} is not a URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FieldValueError(
            "prometheus_url",
            "prometheus_url must be an http:// or https:// URL with a host, e.g. http://prometheus:9090",
        )
    if parts.query or parts.fragment:
        raise FieldValueError("prometheus_url", "prometheus_url takes no ?query or #fragment: give the base URL")
    return url.rstrip("/")


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
    console: ConsoleConfig = msgspec.field(default_factory=ConsoleConfig)
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
    and so does a config whose parts have errors (``raw_references``), so that one run reports both kinds.
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


def raw_references(raw: dict[str, Any]) -> list[str]:
    """``reference_problems`` read off the YAML as parsed, for a config whose parts did not all convert."""
    providers = raw.get("providers")
    names = {str(name) for name in providers} if isinstance(providers, dict) else set()
    models: list[tuple[str, list[str], list[str]]] = []
    listed = raw.get("models")
    for entry in listed if isinstance(listed, list) else []:
        model: dict[str, Any] = entry if isinstance(entry, dict) else {}
        aliases: list[Any] = model["aliases"] if isinstance(model.get("aliases"), list) else []
        targets: list[Any] = model["targets"] if isinstance(model.get("targets"), list) else []
        models.append(
            (
                str(model.get("name", "")),
                [str(alias) for alias in aliases],
                [str(target["provider"]) for target in targets if isinstance(target, dict) and "provider" in target],
            )
        )
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


def currency_problems(config: GatewayConfig) -> list[str]:
    """A key's budget must be in the currency of every priced model it may use (there is no exchange rate)."""
    problems: list[str] = []
    index_of = {name: index for index, model in enumerate(config.models) for name in (model.name, *model.aliases)}
    for key_index, key in enumerate(config.auth.keys):
        if key.budget is None:
            continue
        usable = {index_of[name] for name in key.models if name in index_of} if key.models is not None else None
        for index, model in enumerate(config.models):
            if usable is not None and index not in usable:
                continue
            for number, target in enumerate(model.targets):
                if target.price is not None and target.price.currency != key.budget.currency:
                    problems.append(
                        f"key {key.name!r} has a budget in {key.budget.currency} (at `$.auth.keys[{key_index}]"
                        f".budget.currency`) but may use model {model.name!r}, priced in {target.price.currency}"
                        f" - at `$.models[{index}].targets[{number}].price.currency`"
                    )
    return problems
