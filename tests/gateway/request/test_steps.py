"""gateway/request/steps.py: the one tail of every mode (route ▸ deliver ▸ encode ▸ price ▸ energy).

On the real router, dedup, directory image store, Idempotency-Key table and admission, in
memory; the backend answers PNG bytes at once. The plain answer, a stream's final event and a
job's run all call ``produce``: what it returns is their body, their headers, the budget's
settlement and the request's record.
"""

from __future__ import annotations

import functools
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client import REGISTRY

from adapters.base import AdapterBase, CallOptions
from adapters.upstream import AiohttpUpstream
from gateway.admission.accounting import Cost
from gateway.admission.auth import Authenticator, hash_key
from gateway.admission.gate import Admission
from gateway.admission.ratelimit import MemoryLimiter
from gateway.images.store import DirectoryImageStore, StoreUnavailable
from gateway.jobs.webhooks import Webhooks
from gateway.request.admitted import Completed, Planned
from gateway.request.idempotency import Claim, Idempotency, Stored
from gateway.request.steps import produce, record_of, settle
from gateway.request.streams import completed_event
from gateway.routing.attempts import Attempts
from gateway.routing.cooldown import Cooldowns
from gateway.routing.dedup import Dedup
from gateway.routing.router import Router
from gateway.state import Gateway
from schemas import openai
from schemas.canonical import ErrorCode, GatewayError, GeneratedImage, ImageRequest, ImageResult, ResponseFormat
from tests.gateway.fakes import config

PNG = b"\x89PNG\r\n\x1a\n" + b"image-bytes" * 8
BASE_URL = "http://gw.test"
ENDPOINT = openai.GENERATIONS


class Backend(AdapterBase):
    """Answers each call at once with ``n`` PNGs; counts the calls."""

    def __init__(self) -> None:
        self.name = "p"
        self.calls: list[ImageRequest] = []

    async def generate(self, request: ImageRequest, options: CallOptions) -> ImageResult:
        self.calls.append(request)
        images = [GeneratedImage(data=PNG, width=64, height=64, seed=request.seed) for _ in range(request.n)]
        return ImageResult(images=images, created=1, model=request.model, provider=self.name)


class DownStore(DirectoryImageStore):
    async def put(self, data: bytes, media_type: str = "image/png", ttl_s: int | None = None) -> str:
        raise StoreUnavailable("image store: bucket 'b' is unreachable (timed out)")


def build(tmp_path: Path, backend: Backend, *, cache: bool = False, store: type = DirectoryImageStore) -> Gateway:
    target = {"provider": "p", "model": "pm", "price": {"per_image": 0.01}, "energy_wh_per_image": 2.0}
    model: dict[str, Any] = {"name": "m", "targets": [target]}
    if cache:
        model["cache"] = {"ttl_s": 60}
    key = {"name": "alice", "hash": hash_key("sk-alice-0123456789"), "budget": {"amount": 0.02}}
    quick = {"attempts": 1, "backoff_initial_s": 0.0, "backoff_max_s": 0.0}
    cfg = config({"p": {"retry": quick}}, [model], auth={"keys": [key]})
    limiter = MemoryLimiter()
    router = Router(cfg, {"p": backend}, limiter, Cooldowns())
    images = store(tmp_path / "images", 3600, secret="s" * 32)
    return Gateway(
        config=cfg,
        client=AiohttpUpstream(),
        router=router,
        image_store=images,
        admission=Admission(cfg, Authenticator(cfg.auth), limiter),
        cooldowns=Cooldowns(),
        webhooks=Webhooks(cfg),
        dedup=Dedup(cfg, router, images),
        idempotency=Idempotency(cfg, images),
    )


def planned(gateway: Gateway, request: ImageRequest) -> Planned:
    plan = gateway.router.plan(request.model)
    return Planned(ENDPOINT, request, plan, "alice", time.monotonic() + 30, BASE_URL)


def energy_counted() -> float:
    labels = {"model": "m", "provider": "p", "method": "estimated"}
    return REGISTRY.get_sample_value("image_gateway_energy_kwh_total", labels) or 0.0


async def test_the_tail_delivers_encodes_prices_and_accounts_energy(tmp_path: Path) -> None:
    backend = Backend()
    gateway = build(tmp_path, backend)
    request = ImageRequest(model="m", prompt="a lighthouse", response_format=ResponseFormat.URL)
    attempts = Attempts()
    completed = await produce(gateway, planned(gateway, request), attempts)
    body = msgspec.json.decode(bytes(completed.body))
    url = body["data"][0]["url"]
    assert url.startswith(BASE_URL + "/images/")  # delivered: stored, under the base URL it was given
    assert await gateway.image_store.get(url.rsplit("/", 1)[1]) == (PNG, "image/png")
    assert completed.cost == Cost(Decimal("0.01"), "USD") and completed.micros == 10_000
    assert completed.energy is not None and completed.energy.kwh == pytest.approx(0.002)
    assert body["environment_impact"]["energy_kwh"] == pytest.approx(0.002)  # accounted before it was encoded
    assert completed.headers() == {"X-Gateway-Provider": "p", "X-Gateway-Attempts": "1", "X-Gateway-Cost": "0.0100 USD"}
    assert attempts.answered == "p" and completed.cache is None  # no seed: not a request that is shared


async def test_a_cached_answer_completes_without_a_call_and_its_energy_is_counted_once(tmp_path: Path) -> None:
    backend = Backend()
    gateway = build(tmp_path, backend, cache=True)
    request = ImageRequest(model="m", prompt="a lighthouse", seed=7)
    before = energy_counted()
    first = await produce(gateway, planned(gateway, request), Attempts())
    again = await produce(gateway, planned(gateway, request), Attempts())
    assert len(backend.calls) == 1
    assert first.headers()["X-Gateway-Cache"] == "miss" and again.headers()["X-Gateway-Cache"] == "hit"
    assert again.headers()["X-Gateway-Attempts"] == "0" and again.cost == first.cost
    assert again.energy == first.energy  # the answer carries the footprint of the generation that made it
    assert energy_counted() == pytest.approx(before + 0.002)  # which is counted once


async def test_a_stream_goes_through_dedup_is_never_shared_and_ends_in_its_own_encoding(tmp_path: Path) -> None:
    backend = Backend()
    gateway = build(tmp_path, backend, cache=True)  # a cache that would answer the same plain request
    request = ImageRequest(model="m", prompt="a lighthouse", seed=7, stream=True)
    as_b64 = msgspec.structs.replace(request, response_format=ResponseFormat.B64_JSON)
    encode = functools.partial(completed_event, request)
    answers = [await produce(gateway, planned(gateway, as_b64), Attempts(), encode) for _ in range(2)]
    assert len(backend.calls) == 2 and [answer.cache for answer in answers] == [None, None]
    for answer in answers:
        assert isinstance(answer.body, bytes) and answer.body.startswith(b"event: image_generation.completed\n")
        assert answer.cost == Cost(Decimal("0.01"), "USD") and "X-Gateway-Cache" not in answer.headers()


async def test_a_store_that_fails_fails_the_tail_and_the_record_still_names_who_answered(tmp_path: Path) -> None:
    gateway = build(tmp_path, Backend(), store=DownStore)
    attempts = Attempts()
    request = ImageRequest(model="m", prompt="a lighthouse", response_format=ResponseFormat.URL)
    with pytest.raises(GatewayError) as raised:
        await produce(gateway, planned(gateway, request), attempts)
    assert raised.value.code is ErrorCode.UPSTREAM_ERROR and raised.value.provider is None  # no header says so
    assert attempts.answered == "p"


async def begin(gateway: Gateway, request: ImageRequest) -> Claim | Stored | None:
    assert gateway.idempotency is not None

    async def receive() -> dict[str, Any]:
        raise AssertionError("the client never leaves here")

    return await gateway.idempotency.begin("alice", "key-1", "fp", time.monotonic() + 5, receive)


async def test_with_a_claim_the_answer_is_kept_for_repeats_with_its_headers(tmp_path: Path) -> None:
    gateway = build(tmp_path, Backend())
    request = ImageRequest(model="m", prompt="a lighthouse", response_format=ResponseFormat.URL)
    claim = await begin(gateway, request)
    assert isinstance(claim, Claim)
    completed = await produce(gateway, planned(gateway, request), Attempts(), claim=claim)
    repeat = await begin(gateway, request)
    assert isinstance(repeat, Stored) and repeat.entry.headers == completed.headers()
    url = msgspec.json.decode(bytes(completed.body))["data"][0]["url"]
    assert [image.name for image in repeat.entry.images] == [url.rsplit("/", 1)[1]]  # stored once, for both


async def test_a_claim_whose_tail_fails_gives_its_key_up(tmp_path: Path) -> None:
    gateway = build(tmp_path, Backend(), store=DownStore)
    request = ImageRequest(model="m", prompt="a lighthouse", response_format=ResponseFormat.URL)
    claim = await begin(gateway, request)
    assert isinstance(claim, Claim)
    with pytest.raises(GatewayError):
        await produce(gateway, planned(gateway, request), Attempts(), claim=claim)
    assert claim.ended and isinstance(await begin(gateway, request), Claim)  # a retry may generate


async def test_settle_charges_what_the_answer_cost_and_gives_back_a_failure(tmp_path: Path) -> None:
    gateway = build(tmp_path, Backend())
    key = gateway.config.auth.keys[0]  # a budget of 0.02 USD; each image 0.01
    request = ImageRequest(model="m", prompt="a lighthouse")
    model = gateway.router.plan("m").model
    first, second = [(await gateway.admission.admit(key, request, model)).reservation for _ in range(2)]
    with pytest.raises(GatewayError) as refused:
        await gateway.admission.admit(key, request, model)
    assert refused.value.code is ErrorCode.INSUFFICIENT_QUOTA
    await settle(gateway, first, None)  # a request that got no answer gives all of it back
    completed = await produce(gateway, planned(gateway, request), Attempts())
    await settle(gateway, second, completed)  # one answered is charged its cost
    third = (await gateway.admission.admit(key, request, model)).reservation
    await settle(gateway, third, completed)
    with pytest.raises(GatewayError):  # 0.02 spent
        await gateway.admission.admit(key, request, model)
    await settle(gateway, None, completed)  # an unpriced or unbudgeted request reserved nothing


def test_the_record_is_made_from_what_the_tail_returned() -> None:
    result = ImageResult(images=[GeneratedImage(data=PNG)] * 2, created=1, model="m", provider="p")
    completed = Completed(result, b"{}", Cost(Decimal("0.02"), "USD"), None, "miss", 1)
    attempts = Attempts()
    record = record_of(ENDPOINT, attempts, "ok", model="m", key_name="alice", provider="p", completed=completed)
    assert (record.dialect, record.operation, record.model, record.provider, record.outcome) == (
        ENDPOINT.dialect,
        "generate",
        "m",
        "p",
        "ok",
    )
    assert (record.images, record.cost, record.key, record.attempts) == (2, completed.cost, "alice", attempts)
    failed = record_of(ENDPOINT, attempts, "upstream_error", model="m", key_name=None, provider="p", completed=None)
    assert (failed.images, failed.cost, failed.energy, failed.key) == (0, None, None, "none")
    with pytest.raises(AttributeError):  # frozen: nothing writes into a record
        failed.images = 3  # type: ignore[misc]
