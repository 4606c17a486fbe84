"""Admission: what a request must pass before the gateway spends memory or an upstream call on it.

In the order the pipeline asks (``gateway.request.serve``): the key, from the headers alone
(``authorize``); room for the body in the in-flight budget (``BodyBudget``, taken by
``gateway.inbound`` as the body is read); the inputs within the configured bounds
(``check_inputs``); then model access and the key's and the model's rate limits
(``admit``), and the key's budget with them (``gateway.accounting``), settled by
``settle`` when the request ends. The provider's own limits are checked by the router, per target.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.admission import accounting
from gateway.admission.accounting import Reservation
from gateway.admission.auth import Authenticator
from gateway.admission.ratelimit import ALLOWED, Decision, Limiter, limit_checks
from gateway.config import GatewayConfig, InboundKey, ModelConfig
from gateway.observability import metrics
from schemas.canonical import ErrorCode, GatewayError, ImageRequest

__all__ = ["Admission", "BodyBudget"]


class BodyBudget:
    """Bytes of request bodies the process holds at once (``server.max_inflight_body_bytes``), shared fairly.

    A request reserves its body's bytes as they arrive (never from what it declares) and gives them
    back when it ends, so a flood of large bodies is refused instead of growing the process past what
    the pod was sized for, and stalled uploads hold only what they sent. One holder (a key, or a client
    address on an open gateway) may hold at most ``share`` of the budget (never less than one whole body),
    so one client's uploads cannot take the budget from every other. One event loop per process: no lock.
    """

    def __init__(self, limit: int, share: float = 1.0, max_body: int = 0) -> None:
        self.limit = limit
        self.per_holder = min(limit, max(int(limit * share), max_body))
        self.used = 0
        self.by_holder: dict[str, int] = {}

    def take(self, size: int, holder: str = "") -> ErrorCode | None:
        """Reserve ``size`` bytes for ``holder``; None when taken, else why not (nothing is reserved then):
        ``RATE_LIMITED`` past the holder's share, ``OVERLOADED`` past the whole budget."""
        held = self.by_holder.get(holder, 0)
        if self.used + size > self.limit:
            return ErrorCode.OVERLOADED
        if held + size > self.per_holder:
            return ErrorCode.RATE_LIMITED
        self.used += size
        self.by_holder[holder] = held + size
        metrics.BODY_BYTES_IN_FLIGHT.set(self.used)
        return None

    def give(self, size: int, holder: str = "") -> None:
        self.used -= size
        left = self.by_holder.get(holder, 0) - size
        if left > 0:
            self.by_holder[holder] = left
        else:
            self.by_holder.pop(holder, None)
        metrics.BODY_BYTES_IN_FLIGHT.set(self.used)


class Admission:
    """Every admission check of one gateway process, built once from the config."""

    def __init__(self, config: GatewayConfig, auth: Authenticator, limiter: Limiter) -> None:
        self.config = config
        self.auth = auth
        self.limiter = limiter
        server = config.server
        self.body_budget = BodyBudget(
            server.max_inflight_body_bytes, server.max_inflight_body_share, server.max_body_bytes
        )
        for scope in ("key", "model", "provider"):  # at 0 from the start, for rate() and increase()
            metrics.RATE_LIMITED.labels(scope)
        for key in config.auth.keys:
            if key.budget is not None:
                metrics.BUDGET_AMOUNT.labels(key.name, key.budget.currency).set(key.budget.amount)

    def authorize(self, headers: Mapping[str, str]) -> InboundKey | None:
        """The caller's key (None when the gateway is open), from the headers alone: before any body is read."""
        return self.auth.authenticate(headers)

    def check_inputs(self, request: ImageRequest) -> None:
        """Prompts within the configured length; input images within the configured count and size."""
        server = self.config.server
        for name, text in (("prompt", request.prompt), ("negative_prompt", request.negative_prompt)):
            if text is not None and len(text) > server.max_prompt_chars:
                raise GatewayError(
                    ErrorCode.INVALID_PROMPT,
                    f"`{name}` is {len(text)} characters long; at most {server.max_prompt_chars} are allowed",
                    param=name,
                )
        if len(request.images) > server.max_input_images:
            raise GatewayError(
                ErrorCode.INVALID_REQUEST, f"at most {server.max_input_images} input images", param="image"
            )
        for name, image in [*(("image", image) for image in request.images), ("mask", request.mask)]:
            if image is not None and image.size > server.max_input_image_bytes:
                raise GatewayError(
                    ErrorCode.INVALID_REQUEST,
                    f"`{name}` is larger than {server.max_input_image_bytes} bytes",
                    param=name,
                    status=413,
                )

    async def admit(self, key: InboundKey | None, request: ImageRequest, model: ModelConfig) -> Decision:
        """The key may use the model, the key's and the model's rate limits admit the request, and the
        key's budget has room for its estimated cost (reserved: the decision's ``reservation``)."""
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
        budget = None
        if key is not None and key.budget is not None:
            estimated = accounting.estimate(model, request)  # None: unpriced, admitted without a reservation
            if estimated is not None:
                budget = accounting.budget_check(key, estimated, prefix)
        if not checks and budget is None:
            return ALLOWED
        decision = await self.limiter.check(checks, [budget] if budget is not None else [])
        if not decision.allowed:
            if decision.budget is not None:
                metrics.BUDGET_REFUSED.labels(decision.budget.name).inc()
            else:
                metrics.RATE_LIMITED.labels(decision.scope).inc()
            raise decision.refusal()
        return decision

    async def settle(self, reservation: Reservation, actual: int) -> None:
        """The request ended: its reservation becomes ``actual`` micros (0: a failed request gives it all back)."""
        spent = await self.limiter.settle(reservation, actual)
        for check, total in zip(reservation.checks, spent, strict=False):
            if total >= 0:
                metrics.BUDGET_SPENT.labels(check.name, check.budget.currency).set(total / accounting.MICROS)
