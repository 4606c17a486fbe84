"""gateway/routing/dedup.py on the real router over a backend that holds its answer until told: who shares a
generation, each client's own copy, a client leaving, the last one leaving, a shared failure, the cache."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis

from adapters.base import AdapterBase, CallOptions
from gateway.admission.ratelimit import MemoryLimiter
from gateway.config import GatewayConfig
from gateway.images.store import DirectoryImageStore
from gateway.routing.attempts import Attempts
from gateway.routing.cooldown import Cooldowns
from gateway.routing.dedup import Dedup, _MemoryCache
from gateway.routing.router import Router
from schemas import melious, pomelo
from schemas.canonical import (
    ErrorCode,
    GatewayError,
    GeneratedImage,
    ImageRequest,
    ImageResult,
    InputImage,
    Operation,
    ResponseFormat,
)
from schemas.disconnect import ClientGone
from tests.gateway.fakes import config
from tests.redis_support import require_shared_redis

PNG = b"\x89PNG\r\n\x1a\n" + b"image-bytes" * 8


class HeldBackend(AdapterBase):
    """Answers each call when ``release`` is set (or fails with ``failure``); notes calls and cancellations."""

    def __init__(self, failure: GatewayError | None = None) -> None:
        self.name = "held"
        self.failure = failure
        self.calls: list[ImageRequest] = []
        self.cancelled = 0
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def generate(self, request: ImageRequest, options: CallOptions) -> ImageResult:
        self.calls.append(request)
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.failure is not None:
            raise self.failure
        return ImageResult(
            images=[GeneratedImage(data=PNG, seed=request.seed) for _ in range(request.n)],
            created=1,
            model=request.model,
            provider=self.name,
        )


class Client:
    """An ASGI ``receive`` whose client hangs up when ``leave`` is called."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    def leave(self) -> None:
        self.gone.set()


def build(
    backend: HeldBackend, tmp_path: Path, *, cache: bool = False, redis: Any = None, prefix: str = "igw:", **dedup: Any
) -> tuple[Dedup, Router, GatewayConfig]:
    model: dict[str, Any] = {"name": "m", "aliases": ["alias"], "targets": [{"provider": "held", "model": "hm"}]}
    if cache:
        model["cache"] = {"ttl_s": 60}
    quick = {"attempts": 1, "backoff_initial_s": 0.0, "backoff_max_s": 0.0}
    sections: dict[str, Any] = {"redis": {"key_prefix": prefix}}
    if dedup:
        sections["server"] = {"dedup": dedup}
    cfg = config({"held": {"retry": quick}}, [model], **sections)
    router = Router(cfg, {"held": backend}, MemoryLimiter(), Cooldowns())
    store = DirectoryImageStore(tmp_path / "images", ttl_seconds=3600, secret="s" * 32)
    return Dedup(cfg, router, store, redis), router, cfg


REQUEST = ImageRequest(model="m", prompt="a lighthouse", seed=42)


def test_one_input_image_is_one_identity_whatever_form_it_came_in(tmp_path: Path) -> None:
    dedup, _, _ = build(HeldBackend(), tmp_path)
    edit = msgspec.structs.replace(REQUEST, operation=Operation.EDIT, images=(InputImage(PNG),), mask=InputImage(PNG))
    text = base64.b64encode(PNG).decode()
    sent_as_text = msgspec.structs.replace(edit, images=(InputImage.from_b64(text),), mask=InputImage.from_b64(text))
    other = msgspec.structs.replace(edit, mask=InputImage(PNG + b"!"))
    identities = [dedup.identity("alice", request, "m") for request in (edit, sent_as_text, other)]
    assert identities[0] == identities[1] != identities[2]


def start(
    dedup: Dedup,
    router: Router,
    request: ImageRequest = REQUEST,
    key: str | None = "alice",
    client: Client | None = None,
) -> asyncio.Task[tuple[ImageResult, str | None]]:
    plan = router.plan(request.model)
    receive = (client or Client()).receive
    return asyncio.create_task(dedup.generate(key, request, plan, time.monotonic() + 30, Attempts(), receive))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_identical_seeded_requests_share_one_generation_each_with_its_own_copy(tmp_path: Path) -> None:
    backend = HeldBackend()
    dedup, router, _ = build(backend, tmp_path)
    url_client = ImageRequest(model="m", prompt="a lighthouse", seed=42, response_format=ResponseFormat.URL)
    b64_client = ImageRequest(model="alias", prompt="a lighthouse", seed=42, response_format=ResponseFormat.B64_JSON)
    tagged = ImageRequest(model="m", prompt="a lighthouse", seed=42, user="end-user-7")
    tasks = [start(dedup, router, request) for request in (url_client, b64_client, tagged, url_client, b64_client)]
    await backend.started.wait()
    await settle()
    backend.release.set()
    answers = await asyncio.gather(*tasks)
    assert len(backend.calls) == 1
    assert backend.calls[0].response_format is ResponseFormat.B64_JSON  # the bytes, for every form
    assert [status for _, status in answers] == ["miss", "shared", "shared", "shared", "shared"]
    results = [result for result, _ in answers]
    assert len({id(result) for result in results}) == 5 and len({id(r.images[0]) for r in results}) == 5
    results[0].images[0].url = "https://gw/images/one.png"  # what deliver does for a url client
    assert results[3].images[0].url is None
    # each in its own dialect: Pomelo's Flux answers a URL, Melious base64
    assert pomelo.FLUX.encode_result(results[0], url_client).images[0].url == "https://gw/images/one.png"
    encoded = melious.GENERATIONS.encode_result(results[1], b64_client)
    assert encoded.data[0].b64_json and not encoded.data[0].url


@pytest.mark.parametrize(
    ("other", "key"),
    [
        (ImageRequest(model="m", prompt="a lighthouse"), "alice"),  # no seed
        (ImageRequest(model="m", prompt="a lighthouse", seed=43), "alice"),  # another seed
        (ImageRequest(model="m", prompt="a lighthouse", seed=42, steps=9), "alice"),  # anything else differs
        (ImageRequest(model="m", prompt="a lighthouse", seed=42, stream=True), "alice"),  # a stream
        (REQUEST, "bob"),  # another key
    ],
)
async def test_requests_that_are_not_identical_are_not_shared(other: ImageRequest, key: str, tmp_path: Path) -> None:
    backend = HeldBackend()
    dedup, router, _ = build(backend, tmp_path)
    first = start(dedup, router, REQUEST if other.seed is not None else other)
    second = start(dedup, router, other, key=key)
    await backend.started.wait()
    await settle()
    backend.release.set()
    (_, one), (_, two) = await asyncio.gather(first, second)
    assert len(backend.calls) == 2
    assert two in ("miss", None) and one in ("miss", None)


async def test_across_keys_shares_between_keys(tmp_path: Path) -> None:
    backend = HeldBackend()
    dedup, router, _ = build(backend, tmp_path, across_keys=True)
    tasks = [start(dedup, router, key=key) for key in ("alice", "bob")]
    await backend.started.wait()
    await settle()
    backend.release.set()
    assert [status for _, status in await asyncio.gather(*tasks)] == ["miss", "shared"]
    assert len(backend.calls) == 1


async def test_disabled_shares_nothing(tmp_path: Path) -> None:
    backend = HeldBackend()
    dedup, router, _ = build(backend, tmp_path, enabled=False)
    tasks = [start(dedup, router) for _ in range(2)]
    await backend.started.wait()
    await settle()
    backend.release.set()
    assert [status for _, status in await asyncio.gather(*tasks)] == [None, None]
    assert len(backend.calls) == 2


async def test_a_client_leaving_does_not_cancel_while_another_waits_and_the_last_one_does(tmp_path: Path) -> None:
    backend = HeldBackend()
    dedup, router, _ = build(backend, tmp_path)
    leader, follower, late = Client(), Client(), Client()
    first = start(dedup, router, client=leader)
    second = start(dedup, router, client=follower)
    await backend.started.wait()
    await settle()
    leader.leave()  # the one whose request started the generation
    with pytest.raises(ClientGone):
        await first
    await settle()
    assert backend.cancelled == 0
    follower.leave()
    with pytest.raises(ClientGone):
        await second
    await settle()
    assert backend.cancelled == 1  # nobody waits any more
    # the next identical request starts afresh
    backend.release.set()
    result, status = await start(dedup, router, client=late)
    assert status == "miss" and len(backend.calls) == 2 and result.images[0].data == PNG


async def test_a_failure_reaches_every_client_each_with_its_own_error(tmp_path: Path) -> None:
    backend = HeldBackend(GatewayError(ErrorCode.CONTENT_POLICY, "refused", param="prompt", public=True))
    dedup, router, _ = build(backend, tmp_path)
    tasks = [start(dedup, router) for _ in range(3)]
    await backend.started.wait()
    await settle()
    backend.release.set()
    errors = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(error, GatewayError) and error.code is ErrorCode.CONTENT_POLICY for error in errors)
    assert len({id(error) for error in errors}) == 3
    first = errors[0]
    assert isinstance(first, GatewayError)
    first.param, first.headers["X-Gateway-Attempts"] = "text", "1"  # what one client's dialect does to its copy
    assert all(isinstance(e, GatewayError) and e.param == "prompt" and not e.headers for e in errors[1:])
    assert len(backend.calls) == 1


async def test_the_cache_answers_without_a_call_and_only_for_the_same_key(tmp_path: Path) -> None:
    backend = HeldBackend()
    backend.release.set()
    dedup, router, _ = build(backend, tmp_path, cache=True)
    _, status = await start(dedup, router)
    assert status == "miss" and len(backend.calls) == 1
    again, status = await start(dedup, router, ImageRequest(model="alias", prompt="a lighthouse", seed=42))
    assert status == "hit" and len(backend.calls) == 1
    assert again.images[0].data == PNG and again.images[0].seed == 42 and again.provider == "held"
    _, status = await start(dedup, router, key="bob")
    assert status == "miss" and len(backend.calls) == 2


async def test_a_cached_result_whose_images_are_gone_is_a_miss(tmp_path: Path) -> None:
    backend = HeldBackend()
    backend.release.set()
    dedup, router, _ = build(backend, tmp_path, cache=True)
    await start(dedup, router)
    for file in (tmp_path / "images").iterdir():
        file.unlink()
    _, status = await start(dedup, router)
    assert status == "miss" and len(backend.calls) == 2


def test_the_memory_cache_keeps_its_byte_bound_least_recent_out_first() -> None:
    cache = _MemoryCache(max_bytes=10)
    cache.put("a", b"1234")
    cache.put("b", b"5678")
    assert cache.get("a") == b"1234"  # a is now the most recent
    cache.put("c", b"90ab")
    assert cache.get("b") is None and cache.get("a") == b"1234" and cache.get("c") == b"90ab"
    assert cache.used <= 10
    cache.put("big", b"x" * 11)
    assert cache.get("big") is None and cache.used <= 10


async def test_a_seed_past_64_bits_is_shared_and_cached(tmp_path: Path) -> None:
    backend = HeldBackend()
    dedup, router, _ = build(backend, tmp_path, cache=True)
    huge = ImageRequest(model="m", prompt="a lighthouse", seed=2**64)
    tasks = [start(dedup, router, huge) for _ in range(2)]
    await backend.started.wait()
    await settle()
    backend.release.set()
    assert [status for _, status in await asyncio.gather(*tasks)] == ["miss", "shared"]
    result, status = await start(dedup, router, huge)
    assert status == "hit" and result.images[0].seed == 2**64 and len(backend.calls) == 1


async def test_with_redis_every_replica_answers_from_one_cache(tmp_path: Path) -> None:
    """Two processes' Dedup over one real Redis and one image store: the second answers the first's result."""
    client = aioredis.Redis.from_url(require_shared_redis())
    prefix = f"test-dedup-{uuid.uuid4().hex}:"
    try:
        first_backend, second_backend = HeldBackend(), HeldBackend()
        first_backend.release.set()
        second_backend.release.set()
        first, first_router, _ = build(first_backend, tmp_path, cache=True, redis=client, prefix=prefix)
        second, second_router, _ = build(second_backend, tmp_path, cache=True, redis=client, prefix=prefix)
        _, status = await start(first, first_router)
        assert status == "miss"
        [key] = await client.keys(prefix + "cache:*")
        assert 0 < await client.pttl(key) <= 60_000
        assert b"a lighthouse" not in await client.get(key)  # the request is only a hash
        result, status = await start(second, second_router)
        assert status == "hit" and not second_backend.calls and result.images[0].data == PNG
    finally:
        keys = await client.keys(prefix + "*")
        if keys:
            await client.delete(*keys)
        await client.aclose()
