"""The router on fake adapters: targets in order, retries by policy, fallback, skips, cooldowns."""

from __future__ import annotations

import time

import pytest

from gateway.config import parse_config
from gateway.cooldown import Cooldowns
from gateway.ratelimit import MemoryLimiter
from gateway.router import Attempts, Router
from schemas.canonical import ErrorCode, GatewayError, ImageRequest, Operation
from tests.gateway.fakes import ScriptedAdapter, config

QUICK = {"attempts": 3, "backoff_initial_s": 0.0, "backoff_max_s": 0.0}


def router_for(adapters: dict[str, ScriptedAdapter], targets: list[dict[str, object]], **provider: object) -> Router:
    settings = {name: {"retry": QUICK, **provider} for name in adapters}
    cfg = config(settings, [{"name": "m", "aliases": ["alias"], "targets": targets}])
    return Router(cfg, adapters, MemoryLimiter(), Cooldowns())


def target(provider: str, **limits: object) -> dict[str, object]:
    return {"provider": provider, "model": f"{provider}-model", **limits}


async def generate(router: Router, request: ImageRequest, attempts: Attempts | None = None):  # type: ignore[no-untyped-def]
    return await router.generate(request, router.plan(request.model), time.monotonic() + 30, attempts)


async def test_the_first_target_answers_with_its_own_model_name() -> None:
    first, second = ScriptedAdapter("a"), ScriptedAdapter("b")
    router = router_for({"a": first, "b": second}, [target("a"), target("b")])
    result = await generate(router, ImageRequest(model="alias", prompt="p"))
    assert result.provider == "a" and result.model == "alias"
    assert [call.model for call in first.calls] == ["a-model"] and not second.calls


async def test_a_retryable_failure_is_retried_then_falls_back() -> None:
    down = GatewayError(ErrorCode.UPSTREAM_ERROR, "down")
    first, second = ScriptedAdapter("a", [down, down, down]), ScriptedAdapter("b")
    router = router_for({"a": first, "b": second}, [target("a"), target("b")])
    attempts = Attempts()
    result = await generate(router, ImageRequest(model="m", prompt="p"), attempts)
    assert result.provider == "b"
    assert len(first.calls) == 3 and len(second.calls) == 1
    assert attempts.retries == 2 and attempts.fallbacks == 1 and attempts.calls == 4


async def test_a_client_error_is_neither_retried_nor_fallen_back_from() -> None:
    refused = GatewayError(ErrorCode.CONTENT_POLICY, "no")
    first, second = ScriptedAdapter("a", [refused]), ScriptedAdapter("b")
    router = router_for({"a": first, "b": second}, [target("a"), target("b")])
    with pytest.raises(GatewayError) as raised:
        await generate(router, ImageRequest(model="m", prompt="p"))
    assert raised.value.code is ErrorCode.CONTENT_POLICY
    assert len(first.calls) == 1 and not second.calls


async def test_a_target_that_cannot_serve_the_request_is_skipped_without_a_call() -> None:
    small, edits_only, fallback = ScriptedAdapter("a"), ScriptedAdapter("b"), ScriptedAdapter("c")
    router = router_for(
        {"a": small, "b": edits_only, "c": fallback},
        [target("a", max_n=1, max_width=512), target("b", operations=["edit"]), target("c")],
    )
    attempts = Attempts()
    result = await generate(router, ImageRequest(model="m", prompt="p", n=2, width=1024, height=1024), attempts)
    assert result.provider == "c" and not small.calls and not edits_only.calls
    assert [outcome for _, outcome in attempts.tried][:2] == [
        "skipped: invalid_request",
        "skipped: operation_not_supported",
    ]


async def test_when_every_target_refuses_the_first_reason_is_the_answer() -> None:
    only = ScriptedAdapter("a")
    router = router_for({"a": only}, [target("a", operations=[Operation.EDIT.value])])
    with pytest.raises(GatewayError) as raised:
        await generate(router, ImageRequest(model="m", prompt="p"))
    assert raised.value.code is ErrorCode.OPERATION_NOT_SUPPORTED and not only.calls


async def test_a_provider_that_keeps_failing_is_cooled_down_and_skipped() -> None:
    down = GatewayError(ErrorCode.UPSTREAM_ERROR, "down")
    first, second = ScriptedAdapter("a", [down] * 10), ScriptedAdapter("b")
    router = router_for({"a": first, "b": second}, [target("a"), target("b")], cooldown={"failures": 2, "seconds": 60})
    await generate(router, ImageRequest(model="m", prompt="p"))
    calls_before = len(first.calls)
    result = await generate(router, ImageRequest(model="m", prompt="p"))
    assert result.provider == "b" and len(first.calls) == calls_before  # skipped while cooling down


def test_an_unknown_model_is_model_not_found() -> None:
    router = router_for({"a": ScriptedAdapter("a")}, [target("a")])
    with pytest.raises(GatewayError) as raised:
        router.plan("nope")
    assert raised.value.code is ErrorCode.MODEL_NOT_FOUND and raised.value.param == "model"
    assert router.plan("alias") is router.plan("m")


async def test_every_provider_kind_carries_the_policy_fields_and_local_means_one_attempt() -> None:
    cfg = config({"http": {"retry": QUICK, "limits": {"requests": 5}}}, [{"name": "m", "targets": [target("http")]}])
    text = """
providers:
  gpu: {kind: local, workers: ["http://127.0.0.1:9"], cooldown: {failures: 2, seconds: 5}}
models:
  - {name: m, targets: [{provider: gpu, model: tiny}]}
"""
    gpu = parse_config(text).providers["gpu"]
    assert gpu.retry.attempts == 1 and gpu.cooldown.failures == 2 and gpu.limits is None
    assert gpu.call_timeout_s is None
    http = cfg.providers["http"]
    assert http.retry.attempts == 3 and http.limits is not None and http.call_timeout_s == 180.0
    down = GatewayError(ErrorCode.UPSTREAM_ERROR, "down")
    adapter = ScriptedAdapter("gpu", [down, down])
    router = Router(parse_config(text), {"gpu": adapter}, MemoryLimiter(), Cooldowns())
    with pytest.raises(GatewayError):
        await generate(router, ImageRequest(model="m", prompt="p"))
    assert len(adapter.calls) == 1  # the local provider's default: one call, no retry
