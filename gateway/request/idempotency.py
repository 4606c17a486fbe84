"""Idempotent retries (issue 22, item 9): a repeat with the same ``Idempotency-Key`` gets the first answer.

draft-ietf-httpapi-idempotency-key-header, on every dialect route and on job submission
(``Prefer: respond-async``). What the draft leaves open, decided here (docs/operations.md,
"Idempotent retries"):

- **The header.** A Structured Field string (``"4c1f..."``), as the draft defines it; a bare
  token (``4c1f...``, as Stripe's and most SDKs' clients send it) is taken too, and names the
  same key as its quoted form. Empty, repeated, longer than ``server.idempotency.max_key_chars``,
  not printable ASCII or with parameters: the dialect's 400.
- **Its scope.** The inbound key's name: another key's same ``Idempotency-Key`` is its own.
- **The same request.** The SHA-256 of the route's path, whether it asked for a job, and the
  canonical request as decoded (msgpack; input images as their bytes): the raw body would tell
  apart retries that differ only in a multipart boundary, JSON spacing or key order. Another
  request under a used key is the draft's 422.
- **In flight.** The first request claims the key (an entry ``running``, leased for
  ``request_deadline_s`` plus a margin so a replica that died frees it); a repeat waits for it, up
  to its own deadline (then a 409 with ``Retry-After``), and gets its answer. A job is answered
  as soon as it is queued: a repeat gets the same job.
- **What is kept.** Only answers that succeeded, for ``server.idempotency.ttl_s``: the status,
  the headers a client reads (provider, cost, cache), the result without its images' bytes, and
  each image as its name in the image store (put there, counted against the store's bounds, and
  re-resolved on replay: the same store URL, or the bytes as base64) or as the upstream URL it
  came as; for a job, its id. Never an image in Redis: an entry is a few hundred bytes, and one
  over ``_MAX_ENTRY_BYTES`` is not kept. Its images are put in the store for the window, whatever the
  store's own TTL (on S3 the bucket's lifecycle rule, whole days and at least one, still bounds them;
  an image gone early makes the repeat generate again). A failure is never kept: it drew no image,
  and a retry may succeed (the draft allows either).
- **A client that hangs up.** A claimed request's generation runs in a task of its own
  (``Idempotency.detach``): the proxy timeout that made the client retry does not cancel it,
  and the retry gets its answer. Its budget is settled when it ends (gateway/request/modes.py).
- **Streams.** A repeat of a ``stream: true`` request waits like any other and gets the first
  result as the stream's final events (no partial images). A stream whose client leaves
  frees its key.
- **Where.** Redis when ``redis.url`` is set (every replica sees every key); else a table in
  the process, bounded by ``server.idempotency.memory_entries``.

A replayed answer carries ``Idempotent-Replayed: true`` and ``X-Gateway-Attempts: 0``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any, TypeVar

import msgspec
import structlog

from gateway.config import GatewayConfig
from gateway.images.store import ImageStore, StoreUnavailable
from gateway.observability import metrics
from gateway.request.idempotency_entries import (
    DONE,
    HEADER,
    REPLAYED_HEADER,
    Entry,
    KeptImage,
    Stored,
    parse_key,
)
from schemas.canonical import ErrorCode, GatewayError, GeneratedImage, ImageResult
from schemas.disconnect import unless_client_leaves

__all__ = ["HEADER", "REPLAYED_HEADER", "Claim", "Idempotency", "Stored"]

log = structlog.get_logger("gateway.idempotency")

_LEASE_MARGIN_S = 10.0
_POLL_S = 0.05  # how often a repeat looks whether the first has ended (on another replica)
_MAX_ENTRY_BYTES = 64 * 1024
Receive = Callable[[], Awaitable[Any]]
T = TypeVar("T")

# Set the entry to ARGV[2] (for ARGV[3] ms) only while it is still the claim of owner ARGV[1]; or delete it.
_KEEP_IF_OWNER = """
local v = redis.call('GET', KEYS[1])
if v and string.find(v, ARGV[1], 1, true) then
  if ARGV[2] == '' then return redis.call('DEL', KEYS[1]) end
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""


class _Memory:
    """The table of one process, without Redis: entries with their expiry, oldest out first past the bound."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()

    def get(self, slot: str) -> bytes | None:
        found = self._entries.get(slot)
        if found is None:
            return None
        if found[1] < time.monotonic():
            del self._entries[slot]
            return None
        return found[0]

    def set(self, slot: str, value: bytes, ttl_s: float, only_new: bool = False) -> bool:
        if only_new and self.get(slot) is not None:
            return False
        self._entries.pop(slot, None)
        self._entries[slot] = (value, time.monotonic() + ttl_s)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return True

    def delete(self, slot: str) -> None:
        self._entries.pop(slot, None)


class Idempotency:
    """The ``Idempotency-Key`` table of one gateway process (shared through Redis when there is one)."""

    def __init__(self, config: GatewayConfig, image_store: ImageStore, redis: Any = None) -> None:
        self.settings = config.server.idempotency
        self._store = image_store
        self._redis = redis
        self._prefix = config.redis.key_prefix + "idem:"
        self._lease_s = config.server.request_deadline_s + _LEASE_MARGIN_S
        self._image_ttl_s = self.settings.ttl_s  # its images are put for the window (the store's TTL is for others)
        self._memory = _Memory(self.settings.memory_entries)
        self._ended: dict[str, asyncio.Event] = {}  # slots claimed in this process: their repeats wake at once
        self._detached: set[asyncio.Task[Any]] = set()  # generations that outlive their clients

    def key(self, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """The request's Idempotency-Key; None without one, or when idempotency is off."""
        return parse_key(headers, self.settings.max_key_chars) if self.settings.enabled else None

    def slot(self, key_name: str | None, idempotency_key: str) -> str:
        return hashlib.sha256(f"{key_name or ''}\x00{idempotency_key}".encode()).hexdigest()

    # --- the table: Redis or memory

    async def _get(self, slot: str) -> bytes | None:
        if self._redis is None:
            return self._memory.get(slot)
        value: bytes | None = await self._redis.get(self._prefix + slot)
        return value

    async def _claim(self, slot: str, value: bytes) -> bool:
        if self._redis is None:
            return self._memory.set(slot, value, self._lease_s, only_new=True)
        return bool(await self._redis.set(self._prefix + slot, value, nx=True, px=int(self._lease_s * 1000)))

    async def _settle(self, slot: str, owner: str, value: bytes | None, ttl_s: float = 0.0) -> None:
        """Replace (or, with None, remove) the claim of ``owner``, if it is still its claim."""
        if self._redis is None:
            current = self._memory.get(slot)
            if current is not None and owner.encode() in current:
                if value is None:
                    self._memory.delete(slot)
                else:
                    self._memory.set(slot, value, ttl_s)
            return
        await self._redis.eval(
            _KEEP_IF_OWNER, 1, self._prefix + slot, owner, value or b"", str(max(1, int(ttl_s * 1000)))
        )

    async def forget(self, slot: str) -> None:
        """Remove a kept answer that can no longer be replayed (its images left the store)."""
        if self._redis is None:
            self._memory.delete(slot)
        else:
            await self._redis.delete(self._prefix + slot)

    # --- a request

    async def begin(
        self, key_name: str | None, idempotency_key: str, fingerprint: str, deadline: float, receive: Receive
    ) -> Claim | Stored | None:
        """The claim of the first request, or the kept answer for a repeat (waiting while the first runs).

        None when the table cannot be reached (Redis away): the request is served without the guarantee.
        Another request under the key is a 422; one still running at ``deadline``, a 409.
        """
        slot = self.slot(key_name, idempotency_key)
        try:
            return await unless_client_leaves(receive, self._begin(slot, fingerprint, deadline))
        except GatewayError:
            raise
        except (OSError, ConnectionError, TimeoutError) as exc:
            log.warning("idempotency_unavailable", error=type(exc).__name__)
            metrics.child(metrics.IDEMPOTENCY, "unavailable").inc()
            return None
        except Exception as exc:
            if type(exc).__module__.startswith("redis"):
                log.warning("idempotency_unavailable", error=type(exc).__name__)
                metrics.child(metrics.IDEMPOTENCY, "unavailable").inc()
                return None
            raise

    async def _begin(self, slot: str, fingerprint: str, deadline: float) -> Claim | Stored:
        owner = secrets.token_hex(16)
        running = msgspec.json.encode(Entry(fingerprint=fingerprint, owner=owner))
        while True:
            if await self._claim(slot, running):
                self._ended[slot] = asyncio.Event()
                return Claim(self, slot, owner, fingerprint)
            value = await self._get(slot)
            if value is None:
                continue  # it ended without an answer, or expired, just now: claim it
            try:
                entry = msgspec.json.decode(value, type=Entry)
            except msgspec.DecodeError:  # written by another version: it is replaced
                await self.forget(slot)
                continue
            if entry.fingerprint != fingerprint:
                metrics.child(metrics.IDEMPOTENCY, "conflict").inc()
                raise GatewayError(
                    ErrorCode.INVALID_REQUEST,
                    "this Idempotency-Key was already used for another request; use a new key for a new request",
                    status=422,
                    public=True,
                )
            if entry.state == DONE:
                return Stored(slot, entry)
            if time.monotonic() >= deadline:
                metrics.child(metrics.IDEMPOTENCY, "in_progress").inc()
                raise GatewayError(
                    ErrorCode.INVALID_REQUEST,
                    "a request with this Idempotency-Key is still in progress; retry later",
                    status=409,
                    headers={"Retry-After": "1"},
                    public=True,
                )
            ended = self._ended.get(slot)
            wait = min(_POLL_S if ended is None else 1.0, max(0.0, deadline - time.monotonic()))
            if ended is None:
                await asyncio.sleep(wait)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ended.wait(), wait)

    def detach(self, claim: Claim, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run a claimed request's generation in a task of its own, which keeps (or gives up) the key when it
        ends: a client that hangs up stops only its own wait, and its retry gets the answer."""
        task = self.background(work)
        claim.detached = task
        return task

    async def aclose(self, grace_s: float = 0.0) -> None:
        """At shutdown: let generations whose clients left finish within ``grace_s``, then cancel them (their
        keys' leases lapse, so a retry on another replica generates)."""
        running = set(self._detached)
        if running and grace_s > 0:
            await asyncio.wait(running, timeout=grace_s)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    def background(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """A task this table holds until it ends."""
        task = asyncio.create_task(work)
        self._detached.add(task)
        task.add_done_callback(_forget_task(self._detached))
        return task

    # --- images

    async def keep_images(self, result: ImageResult, wanted_url: bool, base_url: str) -> list[KeptImage]:
        """Each image of a result as it is kept: put in the image store (a client that wants a URL gets
        that stored image's URL, so it is stored once), or the upstream URL it came as."""
        kept: list[KeptImage] = []
        for image in result.images:
            entry = KeptImage(
                media_type=image.media_type,
                width=image.width,
                height=image.height,
                seed=image.seed,
                revised_prompt=image.revised_prompt,
            )
            if image.url is not None and image.data is None and image.b64_json is None:
                entry.url = image.url
            else:
                data = image.as_bytes()
                assert data is not None
                entry.name = await self._store.put(data, image.media_type, math.ceil(self._image_ttl_s))
                if wanted_url and image.url is None:
                    image.url = self._store.url(entry.name, base_url)
            kept.append(entry)
        return kept

    async def result_of(self, entry: Entry, wanted_url: bool, base_url: str) -> ImageResult | None:
        """A kept result with its images re-resolved; None when an image has left the store."""
        assert entry.result is not None
        images: list[GeneratedImage] = []
        for kept in entry.images:
            image = GeneratedImage(
                media_type=kept.media_type,
                width=kept.width,
                height=kept.height,
                seed=kept.seed,
                revised_prompt=kept.revised_prompt,
            )
            if kept.name is None:
                image.url = kept.url
            elif wanted_url:
                image.url = self._store.url(kept.name, base_url)
            else:
                try:
                    found = await self._store.get(kept.name)
                except StoreUnavailable:
                    found = None
                if found is None:
                    return None
                image.data = found[0]
            images.append(image)
        return msgspec.structs.replace(entry.result, images=images)


def _forget_task(tasks: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # a failure nobody waited for any more is not "never retrieved"

    return done


class Claim:
    """The first request under a key: it keeps its answer, or gives the key up when it fails."""

    def __init__(self, table: Idempotency, slot: str, owner: str, fingerprint: str) -> None:
        self.table = table
        self.slot = slot
        self.owner = owner
        self.fingerprint = fingerprint
        self.ended = False
        self.detached: asyncio.Task[Any] | None = None  # its generation, in a task of its own (Idempotency.detach)

    async def keep(
        self,
        headers: Mapping[str, str],
        *,
        result: ImageResult | None = None,
        images: list[KeptImage] | None = None,
        job: str | None = None,
        body: bytes | None = None,
        status: int = 200,
    ) -> None:
        entry = Entry(
            fingerprint=self.fingerprint,
            owner=self.owner,
            state=DONE,
            status=status,
            headers=dict(headers),
            result=msgspec.structs.replace(result, images=[]) if result is not None else None,
            images=images or [],
            job=job,
            body=body.decode() if body is not None else None,
        )
        encoded = msgspec.json.encode(entry)
        if len(encoded) > _MAX_ENTRY_BYTES:
            log.warning("idempotency_entry_too_large", bytes=len(encoded))
            await self.release()
            return
        ttl = self.table._image_ttl_s if entry.images else self.table.settings.ttl_s
        try:
            await self.table._settle(self.slot, self.owner, encoded, ttl)
            metrics.child(metrics.IDEMPOTENCY, "kept").inc()
        except Exception as exc:  # the answer still goes out; a retry would generate again
            log.warning("idempotency_keep_failed", error=type(exc).__name__)
        self._end()

    async def release(self) -> None:
        """The request failed: the key is free for a retry."""
        if self.ended:
            return
        try:
            await self.table._settle(self.slot, self.owner, None)
        except Exception as exc:  # the lease frees it
            log.warning("idempotency_release_failed", error=type(exc).__name__)
        self._end()

    def _end(self) -> None:
        self.ended = True
        ended = self.table._ended.pop(self.slot, None)
        if ended is not None:
            ended.set()
