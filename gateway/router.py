"""The router: a model name or alias → its ordered targets, tried in turn.

Config is data: which provider serves which model, and what each target can do, is in
the configuration; nothing here knows one provider from another.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec
import structlog

from adapters.base import Adapter, CallOptions
from gateway.config import GatewayConfig, TargetConfig
from schemas.canonical import ErrorCode, GatewayError, ImageRequest, ImageResult

__all__ = ["Route", "Router"]

log = structlog.get_logger("gateway.router")


class Route(msgspec.Struct, frozen=True):
    """One target made ready to call: the adapter, the provider's model name and the target's limits."""

    provider: str
    adapter: Adapter
    target: TargetConfig
    options: CallOptions

    def refuses(self, request: ImageRequest) -> GatewayError | None:
        """Why this target cannot serve ``request`` (so it is skipped without a call), or None."""
        target, why = self.target, f"target {self.provider} of model {request.model!r}"
        if target.operations is not None and request.operation not in target.operations:
            return GatewayError(ErrorCode.OPERATION_NOT_SUPPORTED, f"{why} does not do {request.operation.value}")
        if target.max_n is not None and request.n > target.max_n:
            return GatewayError(ErrorCode.INVALID_REQUEST, f"{why} makes at most {target.max_n} images", param="n")
        if target.max_width is not None and (request.width or 0) > target.max_width:
            return GatewayError(ErrorCode.INVALID_SIZE, f"{why} is at most {target.max_width} px wide", param="size")
        if target.max_height is not None and (request.height or 0) > target.max_height:
            return GatewayError(ErrorCode.INVALID_SIZE, f"{why} is at most {target.max_height} px high", param="size")
        return None


class Router:
    """Resolves names and calls targets in order until one answers."""

    def __init__(self, config: GatewayConfig, adapters: Mapping[str, Adapter]) -> None:
        self._routes: dict[str, tuple[Route, ...]] = {}
        for model in config.models:
            routes = tuple(
                Route(target.provider, adapters[target.provider], target, CallOptions(timeout=target.timeout))
                for target in model.targets
            )
            for name in (model.name, *model.aliases):
                self._routes[name] = routes

    @property
    def model_names(self) -> list[str]:
        return sorted(self._routes)

    def routes_for(self, model: str) -> tuple[Route, ...]:
        routes = self._routes.get(model)
        if routes is None:
            raise GatewayError(ErrorCode.MODEL_NOT_FOUND, f"model {model!r} is not served here", param="model")
        return routes

    async def generate(self, request: ImageRequest) -> ImageResult:
        """Try each target that can serve the request; a retryable failure moves on to the next."""
        last_error: GatewayError | None = None
        for route in self.routes_for(request.model):
            refusal = route.refuses(request)
            if refusal is not None:
                log.debug("target_skipped", provider=route.provider, reason=refusal.message)
                last_error = last_error or refusal
                continue
            try:
                result = await route.adapter.generate(
                    msgspec.structs.replace(request, model=route.target.model), route.options
                )
            except GatewayError as error:
                log.info("target_failed", provider=route.provider, code=error.code.value, retryable=error.retryable)
                if not error.retryable:
                    raise
                last_error = error
                continue
            result.model = request.model
            return result
        assert last_error is not None  # a model always has at least one target
        raise last_error
