"""One generation for identical requests (issue 12, item 5): shared in flight, and an opt-in result cache.

Concurrent requests (in one process) whose canonical requests are identical and carry an
explicit seed share one ``Router.generate``: the first is the leader (``X-Gateway-Cache:
miss``), those that arrive while it runs follow it (``shared``). Each client gets its own
copy of the result, delivered and encoded in its own form and dialect by ``gateway.request.steps``.
The generation runs in a task of its own: a client that hangs up stops waiting, and the
generation is cancelled only when the last client waiting for it has gone. A failure
reaches every client, each with its own copy of the error (rendered in its own dialect).

The identity of a request: SHA-256 of the msgpack-encoded canonical request with the model
as resolved (its configured name, whatever alias the client used), ``response_format``
and ``user`` left out (the first is applied per client; the second is an end-user tag, not
part of what is drawn), input images as their bytes (the same image whatever form it came
in: a file, or base64 text), and the inbound key's name (left out with
``server.dedup.across_keys``). Requests without a seed, and streamed requests, are never
shared: a generation without a seed is meant to differ each time.

Since clients of one generation may want different forms, a shared generation asks its
backend for the image bytes (``b64_json``); a client that wants a URL gets the gateway's
image-store URL, as it does from any backend that answers bytes.

A model with ``cache: {ttl_s}`` also keeps its seeded results: the images in the image
store, the rest of the result in Redis (when ``redis.url`` is set; shared by every
replica) or else in an in-process LRU bounded by ``server.dedup.memory_cache_bytes``. A
hit answers without any upstream call (``X-Gateway-Cache: hit``). Only for backends known
to be deterministic: the cache cannot tell.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog

from gateway.config import GatewayConfig
from gateway.images.store import ImageStore, StoreUnavailable
from gateway.observability import metrics
from gateway.routing.attempts import Attempts
from gateway.routing.router import Plan, Router
from schemas.canonical import (
    GatewayError,
    GeneratedImage,
    ImageRequest,
    ImageResult,
    InputImage,
    Progress,
    ResponseFormat,
)
from schemas.disconnect import unless_client_leaves

__all__ = ["CACHE_HEADER", "Dedup"]

log = structlog.get_logger("gateway.dedup")

CACHE_HEADER = "X-Gateway-Cache"
HIT, MISS, SHARED = "hit", "miss", "shared"
Receive = Callable[[], Awaitable[Any]]


class _CachedImage(msgspec.Struct, kw_only=True):
    name: str  # in the image store
    media_type: str
    width: int | None = None
    height: int | None = None
    seed: int | None = None


class _CachedResult(msgspec.Struct, kw_only=True):
    result: ImageResult  # without its images' bytes
    images: list[_CachedImage]
    expires: float  # unix s


@dataclass
class _Flight:
    """One generation in progress, and how many clients wait for it."""

    task: asyncio.Task[ImageResult]
    waiting: int = 0


def _copy_result(result: ImageResult) -> ImageResult:
    """A copy each client may change (``deliver`` sets its images' URLs); the bytes themselves are shared."""
    return msgspec.structs.replace(
        result,
        images=[msgspec.structs.replace(image) for image in result.images],
        timings=msgspec.structs.replace(result.timings),
        usage=msgspec.structs.replace(result.usage),
    )


def _copy_error(error: BaseException) -> BaseException:
    """A copy of a shared failure: each client's dialect rewrites its ``param`` and adds its headers."""
    if not isinstance(error, GatewayError):
        return error
    copy = type(error).__new__(type(error))
    copy.__dict__.update(error.__dict__)
    copy.args = error.args
    copy.headers = dict(error.headers)
    copy.__cause__ = error.__cause__
    return copy


class _MemoryCache:
    """Encoded entries, least recently used first out, their bytes bounded."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self._entries: OrderedDict[str, bytes] = OrderedDict()

    def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: bytes) -> None:
        if len(entry) > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        self.used -= len(old) if old is not None else 0
        self._entries[key] = entry
        self.used += len(entry)
        while self.used > self.max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self.used -= len(dropped)


def _input_bytes(obj: Any) -> bytes:
    """An input image as its bytes in the identity: the same image hashes the same, whatever form it came in."""
    if isinstance(obj, InputImage):
        return obj.as_bytes()
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


class Dedup:
    """Shared generations in flight and the per-model result cache of one gateway process."""

    def __init__(self, config: GatewayConfig, router: Router, image_store: ImageStore, redis: Any = None) -> None:
        self.settings = config.server.dedup
        self._router = router
        self._store = image_store
        self._redis = redis
        self._prefix = config.redis.key_prefix + "cache:"
        store_ttl = float(config.image_store.ttl_seconds)
        # A cached result lives no longer than its images in the store.
        self._ttls = {model.name: min(model.cache.ttl_s, store_ttl) for model in config.models if model.cache}
        self._memory = _MemoryCache(self.settings.memory_cache_bytes)
        self._flights: dict[str, _Flight] = {}

    def identity(self, key_name: str | None, request: ImageRequest, model: str) -> str | None:
        """The hash identical requests share; None for a request that is never shared (no seed, a stream)."""
        if not self.settings.enabled or request.seed is None or request.stream:
            return None
        same = msgspec.structs.replace(request, model=model, response_format=ResponseFormat.URL, user=None)
        try:
            encoded = msgspec.msgpack.encode(same, enc_hook=_input_bytes)
        except OverflowError:  # a seed past 64 bits (passed on as the client gave it)
            encoded = msgspec.json.encode(same, enc_hook=_input_bytes)
        digest = hashlib.sha256(encoded)
        digest.update(b"\x00key:" + ("*" if self.settings.across_keys else (key_name or "")).encode())
        return digest.hexdigest()

    async def generate(
        self,
        key_name: str | None,
        request: ImageRequest,
        plan: Plan,
        deadline: float,
        attempts: Attempts,
        receive: Receive | None = None,
        progress: Callable[[Progress], None] | None = None,
    ) -> tuple[ImageResult, str | None]:
        """``Router.generate`` for one client, shared or answered from the cache when it may be; the result
        and what the ``X-Gateway-Cache`` header says (None: the request is not one that is shared).

        ``receive`` (the request's ASGI receive) stops the wait when the client hangs up (``ClientGone``);
        None for a caller with no client connection (a detached job). ``progress`` goes to the backend
        when this request's generation is its own or it leads a shared one (followers hear none).
        """
        model = plan.model.name
        identity = self.identity(key_name, request, model)
        if identity is None:
            work = self._router.generate(request, plan, deadline, attempts, progress)
            return (await unless_client_leaves(receive, work) if receive else await work), None
        ttl = self._ttls.get(model)
        if ttl is not None:
            cached = await self._cached(identity)
            if cached is not None:
                metrics.child(metrics.CACHE_LOOKUPS, model, HIT).inc()
                return cached, HIT
        flight = self._flights.get(identity)
        status = SHARED
        if flight is None:
            status = MISS
            shared_request = msgspec.structs.replace(request, response_format=ResponseFormat.B64_JSON)
            task = asyncio.create_task(self._lead(identity, shared_request, plan, deadline, attempts, ttl, progress))
            flight = self._flights[identity] = _Flight(task)
            task.add_done_callback(lambda _: self._land(identity, flight))
        metrics.child(metrics.CACHE_LOOKUPS, model, status).inc()
        flight.waiting += 1
        try:
            shielded = asyncio.shield(flight.task)  # a client leaving stops its own wait, not the generation
            result = await (unless_client_leaves(receive, shielded) if receive else shielded)
        except GatewayError as error:
            raise _copy_error(error) from error.__cause__
        finally:
            flight.waiting -= 1
            if flight.waiting == 0 and not flight.task.done():
                flight.task.cancel()  # the last client waiting has gone
                self._land(identity, flight)
        return _copy_result(result), status

    def _land(self, identity: str, flight: _Flight) -> None:
        """The flight no longer takes followers (it ended, or nobody waits for it any more)."""
        if self._flights.get(identity) is flight:
            del self._flights[identity]

    async def _lead(
        self,
        identity: str,
        request: ImageRequest,
        plan: Plan,
        deadline: float,
        attempts: Attempts,
        ttl: float | None,
        progress: Callable[[Progress], None] | None,
    ) -> ImageResult:
        result = await self._router.generate(request, plan, deadline, attempts, progress)
        if ttl is not None:
            try:
                await self._keep(identity, result, ttl)
            except Exception as exc:  # a result that cannot be kept is still the clients' answer
                log.warning("cache_keep_failed", error=type(exc).__name__)
        return result

    # --- the result cache ---

    async def _keep(self, identity: str, result: ImageResult, ttl: float) -> None:
        """Store the images and remember the result; a store or Redis that fails only means no cache entry."""
        datas = [image.as_bytes() for image in result.images]
        if not datas or any(data is None for data in datas):
            return  # an image the backend gave as a URL only: nothing to keep
        pairs = zip(datas, result.images, strict=True)
        puts = (self._store.put(data or b"", image.media_type) for data, image in pairs)
        try:
            names = await asyncio.gather(*puts)
        except StoreUnavailable as exc:
            log.warning("cache_store_failed", detail=str(exc))
            return
        entry = _CachedResult(
            result=msgspec.structs.replace(result, images=[]),
            images=[
                _CachedImage(
                    name=name, media_type=image.media_type, width=image.width, height=image.height, seed=image.seed
                )
                for name, image in zip(names, result.images, strict=True)
            ],
            expires=time.time() + ttl,
        )
        encoded = msgspec.json.encode(entry)  # JSON: any seed a client sent fits
        if self._redis is None:
            self._memory.put(identity, encoded)
            return
        try:
            await self._redis.set(self._prefix + identity, encoded, px=max(1, int(ttl * 1000)))
        except Exception as exc:  # Redis away: this result is not cached, the request is still answered
            log.warning("cache_redis_failed", error=type(exc).__name__)

    async def _cached(self, identity: str) -> ImageResult | None:
        """The cached result with its images' bytes from the store; None when absent, expired or incomplete."""
        if self._redis is None:
            encoded = self._memory.get(identity)
        else:
            try:
                encoded = await self._redis.get(self._prefix + identity)
            except Exception as exc:  # Redis away: a miss
                log.warning("cache_redis_failed", error=type(exc).__name__)
                return None
        if encoded is None:
            return None
        try:
            entry = msgspec.json.decode(encoded, type=_CachedResult)
        except msgspec.DecodeError:  # written by another version of the gateway: a miss
            return None
        if entry.expires < time.time():
            return None
        try:
            found = await asyncio.gather(*(self._store.get(image.name) for image in entry.images))
        except StoreUnavailable as exc:
            log.warning("cache_store_failed", detail=str(exc))
            return None
        images = []
        for image, stored in zip(entry.images, found, strict=True):
            if stored is None:
                return None  # an image expired or was removed: generate again
            images.append(
                GeneratedImage(
                    data=stored[0], media_type=image.media_type, width=image.width, height=image.height, seed=image.seed
                )
            )
        return msgspec.structs.replace(entry.result, images=images)
