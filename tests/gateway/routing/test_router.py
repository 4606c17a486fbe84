"""The router on fake adapters: targets in order, retries by policy, fallback, skips, cooldowns."""

from __future__ import annotations

import time

import pytest

from gateway.admission.ratelimit import MemoryLimiter
from gateway.config import parse_config
from gateway.routing.attempts import Attempts
from gateway.routing.cooldown import Cooldowns
from gateway.routing.router import Router
from schemas.canonical import ErrorCode, FailureReason, GatewayError, ImageRequest, Operation
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


SHED = GatewayError(ErrorCode.OVERLOADED, "queue full", retry_after=2.0, reason=FailureReason.LOAD_SHED)
UNAVAILABLE = GatewayError(ErrorCode.OVERLOADED, "no weights", reason=FailureReason.MODEL_UNAVAILABLE)
BAD_INPUT = GatewayError(ErrorCode.INVALID_REQUEST, "`image` declares 50000x50000 pixels", param="image")


@pytest.mark.parametrize("failure", [SHED, UNAVAILABLE, BAD_INPUT], ids=["load_shed", "model_unavailable", "client"])
async def test_what_is_not_the_providers_fault_never_cools_it_down(failure: GatewayError) -> None:
    """A shed load, one missing model and a client's bad input, many times over: the provider still serves."""
    first = ScriptedAdapter("a", [failure] * 20)
    router = router_for({"a": first}, [target("a")], cooldown={"failures": 2, "seconds": 60})
    for _ in range(20):
        with pytest.raises(GatewayError) as raised:
            await generate(router, ImageRequest(model="m", prompt="p"))
        assert raised.value.code is failure.code
    assert len(first.calls) == 20  # each called once (no retry on the same target), never skipped
    assert (await generate(router, ImageRequest(model="m", prompt="p"))).provider == "a"


async def test_a_shed_load_or_a_missing_model_falls_back_at_once() -> None:
    for failure in (SHED, UNAVAILABLE):
        first, second = ScriptedAdapter("a", [failure]), ScriptedAdapter("b")
        router = router_for({"a": first, "b": second}, [target("a"), target("b")])
        attempts = Attempts()
        assert (await generate(router, ImageRequest(model="m", prompt="p"), attempts)).provider == "b"
        assert len(first.calls) == 1 and attempts.tried == [("a", failure.outcome), ("b", "ok")]


async def test_a_shed_load_alone_keeps_its_retry_after_and_says_so_in_the_gateways_words() -> None:
    router = router_for({"a": ScriptedAdapter("a", [SHED])}, [target("a")])
    with pytest.raises(GatewayError) as raised:
        await generate(router, ImageRequest(model="m", prompt="p"))
    assert raised.value.status == 503 and raised.value.retry_after == 2.0
    assert "more requests waiting than it holds" in raised.value.message


async def test_a_missing_model_alone_is_a_503_that_names_no_path() -> None:
    failure = GatewayError(
        ErrorCode.OVERLOADED, "weights not in /srv/models/sd", reason=FailureReason.MODEL_UNAVAILABLE
    )
    router = router_for({"a": ScriptedAdapter("a", [failure])}, [target("a")])
    with pytest.raises(GatewayError) as raised:
        await generate(router, ImageRequest(model="m", prompt="p"))
    assert raised.value.status == 503 and "/srv" not in raised.value.message
    assert "'m' is not available here" in raised.value.message
