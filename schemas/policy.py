"""How the router treats every provider, whatever its kind: retries, cooldown, its own rate limit.

Plain msgspec Structs, part of each provider's settings (``gateway.config`` for the HTTP
providers, ``schemas.local`` for the local backend), so the router reads the same fields
of every provider with plain attribute access, and a misspelt field is a config error.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["CooldownPolicy", "ProviderPolicy", "RateLimit", "RetryPolicy"]

Seconds = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]


class RetryPolicy(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How a target is retried on a retryable failure, before the route falls back to the next target."""

    attempts: PositiveInt = 3  # calls in all, the first one included
    backoff_initial_s: Annotated[float, msgspec.Meta(ge=0)] = 0.2
    backoff_max_s: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    retry_after_cap_s: Annotated[float, msgspec.Meta(ge=0)] = 10.0  # an upstream's Retry-After is honoured up to this


class CooldownPolicy(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A provider that fails ``failures`` times in a row is skipped for ``seconds``."""

    failures: PositiveInt = 5
    seconds: Seconds = 30.0


class RateLimit(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """At most ``requests`` requests and ``images`` images per ``period_s`` (GCRA: a full burst, then evenly)."""

    requests: PositiveInt | None = None
    images: PositiveInt | None = None
    period_s: Seconds = 60.0


class ProviderPolicy(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The fields every provider's settings carry, whatever its kind.

    ``call_timeout_s``: how long one call may take in all (a target's own ``timeout``
    overrides it; None: only the request's deadline bounds it).
    """

    retry: RetryPolicy = msgspec.field(default_factory=RetryPolicy)
    cooldown: CooldownPolicy = msgspec.field(default_factory=CooldownPolicy)
    limits: RateLimit | None = None  # keeps the gateway inside the provider's quota

    @property
    def call_timeout_s(self) -> float | None:
        return None

    @property
    def shared_cooldown(self) -> bool:
        """Whether a cooldown of this provider holds for every replica (through Redis): it is one upstream
        that every replica calls. Not so for models run in each gateway process (``kind: local`` without
        ``workers``): one replica's engine failing says nothing of another's."""
        return True
