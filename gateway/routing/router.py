"""The router: a model name or alias → its ordered targets, each retried, then the next.

Config is data: which provider serves which model, what each target can do, and how
each provider is retried, cooled down and limited all come from the configuration;
nothing here knows one provider from another.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple

import msgspec
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, stop_any
from tenacity.stop import stop_base
from tenacity.wait import wait_random_exponential

from adapters.base import Adapter, CallOptions
from gateway.admission.ratelimit import Limiter, limit_checks
from gateway.config import GatewayConfig, ModelConfig, TargetConfig
from gateway.observability import metrics, tracing
from gateway.observability.recent import RecentCalls
from gateway.routing.attempts import Attempts
from gateway.routing.cooldown import Cooldowns
from gateway.routing.failures import cooling_down, current_request_id, tell_client
from schemas.canonical import ErrorCode, FailureReason, GatewayError, ImageRequest, ImageResult, Progress
from schemas.policy import CooldownPolicy, ProviderPolicy, RateLimit, RetryPolicy

__all__ = ["Plan", "Route", "Router"]

log = structlog.get_logger("gateway.router")


class Route(msgspec.Struct, frozen=True):
    """One target made ready to call: the adapter, the provider's model name and the target's limits."""

    provider: str
    adapter: Adapter
    target: TargetConfig
    retry: RetryPolicy
    cooldown: CooldownPolicy
    limits: RateLimit | None
    timeout: float | None
    # Whether this provider's cooldown holds for every replica (``ProviderPolicy.shared_cooldown``).
    shared_cooldown: bool = True

    def refuses(self, request: ImageRequest) -> GatewayError | None:
        """Why this target cannot serve ``request`` (so it is skipped without a call), or None.

        Told in terms of the model the client asked for: the provider's name stays in the config.
        """
        target, why = self.target, f"model {request.model!r}"
        if target.operations is not None and request.operation not in target.operations:
            return _public(ErrorCode.OPERATION_NOT_SUPPORTED, f"{why} does not do {request.operation.value}")
        if target.max_n is not None and request.n > target.max_n:
            return _public(ErrorCode.INVALID_REQUEST, f"{why} makes at most {target.max_n} images", param="n")
        if target.max_width is not None and (request.width or 0) > target.max_width:
            return _public(ErrorCode.INVALID_SIZE, f"{why} is at most {target.max_width} px wide", param="size")
        if target.max_height is not None and (request.height or 0) > target.max_height:
            return _public(ErrorCode.INVALID_SIZE, f"{why} is at most {target.max_height} px high", param="size")
        return None


def _public(code: ErrorCode, message: str, param: str | None = None) -> GatewayError:
    return GatewayError(code, message, param=param, public=True)


class Plan(NamedTuple):
    """A request's model, resolved once: its configuration and its targets in order."""

    model: ModelConfig
    routes: tuple[Route, ...]


class _Wait:
    """Backoff between attempts: the upstream's Retry-After up to a cap, else exponential with jitter."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.jitter = wait_random_exponential(multiplier=policy.backoff_initial_s, max=policy.backoff_max_s)

    def __call__(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, GatewayError) and error.retry_after is not None:
            return min(error.retry_after, self.policy.retry_after_cap_s)
        return float(self.jitter(state))


class _StopAtDeadline(stop_base):
    """Stop retrying when the next wait would end past the request's deadline."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        return time.monotonic() + retry_state.upcoming_sleep >= self.deadline


def _retry_same_target(exc: BaseException) -> bool:
    return isinstance(exc, GatewayError) and exc.retry_same_target


class Router:
    """Resolves names and calls targets in order until one answers."""

    def __init__(
        self, config: GatewayConfig, adapters: Mapping[str, Adapter], limiter: Limiter, cooldowns: Cooldowns
    ) -> None:
        self._limiter = limiter
        self._cooldowns = cooldowns
        self._prefix = config.redis.key_prefix
        self.recent = RecentCalls()  # the last minutes of calls per provider, for the console's status
        self._models: dict[str, Plan] = {}
        for model in config.models:
            routes = tuple(self._route(target, config.providers[target.provider], adapters) for target in model.targets)
            plan = Plan(model, routes)
            for name in (model.name, *model.aliases):
                self._models[name] = plan
        # Each provider's counters exist at 0 from the start: a series born at 1 shows no increase() in
        # Prometheus, so the alerts on them would miss a process's first cooldown or refused credential.
        for provider in config.providers:
            metrics.COOLDOWNS.labels(provider)
            metrics.UPSTREAM_AUTH_FAILURES.labels(provider)

    @staticmethod
    def _route(target: TargetConfig, provider: ProviderPolicy, adapters: Mapping[str, Adapter]) -> Route:
        return Route(
            provider=target.provider,
            adapter=adapters[target.provider],
            target=target,
            retry=provider.retry,
            cooldown=provider.cooldown,
            limits=provider.limits,
            timeout=target.timeout or provider.call_timeout_s,
            shared_cooldown=provider.shared_cooldown,
        )

    @property
    def model_names(self) -> list[str]:
        return sorted(self._models)

    def plan(self, name: str) -> Plan:
        """The configured model behind a name or alias, with its targets; ``model_not_found`` otherwise."""
        found = self._models.get(name)
        if found is None:
            raise GatewayError(ErrorCode.MODEL_NOT_FOUND, f"model {name!r} is not served here", param="model")
        return found

    async def generate(
        self,
        request: ImageRequest,
        plan: Plan,
        deadline: float,
        attempts: Attempts | None = None,
        progress: Callable[[Progress], None] | None = None,
    ) -> ImageResult:
        """Each target of ``plan`` that can serve the request, retried by its policy; a retryable failure falls back.

        ``progress`` is handed to each call (``CallOptions.progress``).
        A failure reaches the client in the gateway's own words about the model it asked for
        (``gateway.failures``); what the upstream said was logged with each attempt.
        """
        attempts = attempts or Attempts()
        routes = plan.routes
        await self._cooldowns.refresh([route.provider for route in routes if route.shared_cooldown])
        last_error: GatewayError | None = None
        skips: list[GatewayError] = []
        for route in routes:
            skipped = await self._skip_reason(route, request)
            if skipped is not None:
                attempts.record(route.provider, f"skipped: {skipped.outcome}")
                skips.append(skipped)
                last_error = last_error or skipped
                continue
            if attempts.calls:  # an earlier target was called and failed
                attempts.fallbacks += 1
                metrics.FALLBACKS.labels(plan.model.name).inc()
            try:
                result = await self._call(route, request, deadline, attempts, progress)
            except GatewayError as error:
                if not error.retryable or time.monotonic() >= deadline:
                    raise tell_client(error, request.model) from error.__cause__
                last_error = error
                continue
            result.model = request.model
            return result
        assert last_error is not None  # a model always has at least one target
        if len(skips) == len(routes) and last_error.retryable:
            # Nothing was called: the client may come back when the first skipped target is.
            waits = [skip.retry_after for skip in skips if skip.retry_after is not None]
            last_error.retry_after = min(waits, default=last_error.retry_after)
        raise tell_client(last_error, request.model)

    async def _skip_reason(self, route: Route, request: ImageRequest) -> GatewayError | None:
        refusal = route.refuses(request)
        if refusal is not None:
            return refusal
        if self._cooldowns.cooling(route.provider):
            return cooling_down(request.model, self._cooldowns.remaining(route.provider))
        checks = limit_checks(route.limits, "provider", route.provider, request.n, self._prefix)
        if checks:
            decision = await self._limiter.check(checks)
            if not decision.allowed:
                metrics.RATE_LIMITED.labels("provider").inc()
                refusal = decision.refusal()
                refusal.public = True  # the gateway's own limit, told in its own words
                return refusal
        return None

    async def _call(
        self,
        route: Route,
        request: ImageRequest,
        deadline: float,
        attempts: Attempts,
        progress: Callable[[Progress], None] | None,
    ) -> ImageResult:
        upstream = msgspec.structs.replace(request, model=route.target.model)
        try:  # the first call goes straight: the retry machinery costs only when something failed
            return await self._attempt(route, upstream, deadline, attempts, progress)
        except GatewayError as error:
            if not error.retry_same_target or route.retry.attempts < 2:
                raise
            first_failure = error
        retrying = AsyncRetrying(
            stop=stop_any(stop_after_attempt(route.retry.attempts), _StopAtDeadline(deadline)),
            wait=_Wait(route.retry),
            retry=retry_if_exception(_retry_same_target),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if attempt.retry_state.attempt_number == 1:
                    raise first_failure  # tenacity waits and counts from the call already made
                attempts.retries += 1
                metrics.RETRIES.labels(route.provider).inc()
                return await self._attempt(route, upstream, deadline, attempts, progress)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _attempt(
        self,
        route: Route,
        request: ImageRequest,
        deadline: float,
        attempts: Attempts,
        progress: Callable[[Progress], None] | None,
    ) -> ImageResult:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise GatewayError(ErrorCode.UPSTREAM_TIMEOUT, "the request's deadline passed before an answer")
        timeout = min(route.timeout or remaining, remaining)
        started = time.perf_counter()
        span = tracing.Attempt(route.provider, route.target.model, request) if tracing.enabled else None
        try:
            async with asyncio.timeout(timeout):
                options = CallOptions(
                    timeout=timeout,
                    request_id=current_request_id(),
                    progress=progress,
                    traceparent=span.traceparent if span is not None else None,
                )
                result = await route.adapter.generate(request, options)
        except TimeoutError:
            error = GatewayError(
                ErrorCode.UPSTREAM_TIMEOUT,
                f"provider {route.provider} did not answer in {timeout:g} s",
                provider=route.provider,
            )
            await self._failed(route, error, attempts, time.perf_counter() - started)
            raise error from None
        except GatewayError as error:
            await self._failed(route, error, attempts, time.perf_counter() - started)
            raise
        finally:
            if span is not None:
                span.end(sys.exc_info()[1])
        self._cooldowns.record_success(route.provider)
        self._observe(route, None, attempts, time.perf_counter() - started)
        return result

    def _observe(self, route: Route, error: GatewayError | None, attempts: Attempts, seconds: float) -> None:
        """Metrics for every call; a log line of its own for a failed one (the request's line tells the rest).

        The failed call's line holds what the client is not told: the provider, the
        upstream's own words or the exception, under the request id.
        """
        duration_ms = round(seconds * 1000, 2)
        outcome = "ok" if error is None else error.outcome
        attempts.record(route.provider, outcome, duration_ms)
        metrics.child(metrics.UPSTREAM_CALLS, route.provider, outcome).inc()
        metrics.child(metrics.UPSTREAM_DURATION, route.provider, outcome).observe(seconds)
        self.recent.record(route.provider, error is None, seconds)
        if error is None:
            return
        cause = error.__cause__
        while cause is not None and cause.__cause__ is not None:  # the client library's own, under our wrappers
            cause = cause.__cause__
        log.info(
            "upstream_attempt",
            provider=route.provider,
            upstream_model=route.target.model,
            attempt=attempts.calls,
            outcome=outcome,
            detail=error.message,
            exception=type(cause).__name__ if cause is not None else None,
            duration_ms=duration_ms,
        )

    async def _failed(self, route: Route, error: GatewayError, attempts: Attempts, seconds: float) -> None:
        """Log and count a failed call; only a failure of the provider's own counts toward its cooldown.

        A client's fault (bad input: never retryable), a shed load (a full local queue) and one
        model that is not there (``GatewayError.counts_toward_cooldown``) say nothing against
        the provider: cooling it down would take it from every other client and model.
        """
        self._observe(route, error, attempts, seconds)
        if error.reason is FailureReason.UPSTREAM_CREDENTIALS:
            await self._credentials_refused(route, error)
        elif error.counts_toward_cooldown and await self._cooldowns.record_failure(
            route.provider, route.cooldown.failures, route.cooldown.seconds, shared=route.shared_cooldown
        ):
            metrics.COOLDOWNS.labels(route.provider).inc()

    async def _credentials_refused(self, route: Route, error: GatewayError) -> None:
        """The provider refused the gateway's own key: an operator must act, and nobody gains from calling again.

        Logged at error level and counted, then the provider cools down at once for its
        cooldown's seconds: the key is not hammered meanwhile, and the next replica learns it too.
        """
        metrics.UPSTREAM_AUTH_FAILURES.labels(route.provider).inc()
        log.error(
            "upstream_credentials_refused",
            provider=route.provider,
            upstream_model=route.target.model,
            detail=error.message,
            cooldown_s=route.cooldown.seconds,
        )
        if not self._cooldowns.cooling(route.provider):
            await self._cooldowns.cool_down(
                route.provider, route.cooldown.seconds, shared=route.shared_cooldown, reason=error.outcome
            )
            metrics.COOLDOWNS.labels(route.provider).inc()
