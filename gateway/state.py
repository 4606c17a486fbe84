"""What the app's lifespan builds once and every request shares, and the admission steps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from adapters.upstream import UpstreamClient
from gateway import metrics
from gateway.admission import BodyBudget
from gateway.auth import Authenticator
from gateway.config import GatewayConfig, InboundKey
from gateway.cooldown import Cooldowns
from gateway.imagestore import DirectoryImageStore
from gateway.ratelimit import ALLOWED, Decision, Limiter
from gateway.router import Router, limit_checks
from schemas.canonical import ErrorCode, GatewayError, ImageRequest

__all__ = ["Gateway"]


@dataclass
class Gateway:
    """The shared resources of one gateway process."""

    config: GatewayConfig
    client: UpstreamClient
    router: Router
    image_store: DirectoryImageStore
    auth: Authenticator
    limiter: Limiter
    cooldowns: Cooldowns
    redis: Any = None
    adapters: dict[str, Any] = field(default_factory=dict)
    body_budget: BodyBudget = field(default_factory=lambda: BodyBudget(2**62))

    @property
    def public_base_url(self) -> str:
        return self.config.image_store.public_base_url.rstrip("/")

    def check_inputs(self, request: ImageRequest) -> None:
        """Input images within the configured count and size."""
        server = self.config.server
        if len(request.images) > server.max_input_images:
            raise GatewayError(
                ErrorCode.INVALID_REQUEST, f"at most {server.max_input_images} input images", param="image"
            )
        for name, data in [*(("image", image) for image in request.images), ("mask", request.mask)]:
            if data is not None and len(data) > server.max_input_image_bytes:
                raise GatewayError(
                    ErrorCode.INVALID_REQUEST,
                    f"`{name}` is larger than {server.max_input_image_bytes} bytes",
                    param=name,
                    status=413,
                )

    async def admit(self, key: InboundKey | None, request: ImageRequest) -> Decision:
        """The key may use the model, and the key's and the model's rate limits admit the request."""
        model = self.router.model(request.model)
        if key is not None and key.models is not None and not {request.model, model.name} & set(key.models):
            raise GatewayError(
                ErrorCode.MODEL_NOT_FOUND,
                f"model {request.model!r} does not exist or this key may not use it",
                param="model",
            )
        prefix = self.config.redis.key_prefix
        checks = limit_checks(model.limits, "model", model.name, request.n, prefix)
        if key is not None:
            key_limits = key.limits or self.config.auth.default_limits
            checks += limit_checks(key_limits, "key", key.name, request.n, prefix)
        if not checks:
            return ALLOWED
        decision = await self.limiter.check(checks)
        if not decision.allowed:
            metrics.RATE_LIMITED.labels(decision.scope).inc()
            raise decision.refusal()
        return decision
