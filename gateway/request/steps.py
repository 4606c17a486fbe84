"""The tail of every request, whatever its mode: route ▸ deliver ▸ encode ▸ price ▸ energy.

After admission a request is ``Planned`` (gateway/request/admitted.py): its endpoint, canonical
request, plan, key, deadline and the base URL its stored images are published under, as plain
values. ``produce`` runs its tail, the same for the plain answer, a stream's final event and a
job's run:

1. route, through ``gateway.routing.dedup`` (which shares a generation or answers from the
   cache where it may, and never for a stream);
2. keep the result for repeats of an Idempotency-Key (``claim``), its images in the store;
3. ``complete``: its energy accounted (the answer carries ``environment_impact``), its images
   in the form the client wants (``deliver``), the answer encoded (the dialect's body, or the
   stream's final event), its cost.

What it returns, a ``Completed``, is all the rest needs: the answer's body and headers, what
the key's budget is settled at (``settle``), and what the request's record counts
(``record_of``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog

from gateway.admission import accounting
from gateway.images.store import ImageStore, StoreUnavailable
from gateway.observability import energy
from gateway.observability.record import RequestRecord
from gateway.request.admitted import Completed, Planned
from gateway.routing.attempts import Attempts
from gateway.routing.dedup import MISS
from schemas.canonical import (
    ErrorCode,
    GatewayError,
    GeneratedImage,
    ImageResult,
    Progress,
    ResponseFormat,
)
from schemas.dialect import Endpoint
from schemas.imageforms import Conversion, Pieces, conversion, encode_answer

if TYPE_CHECKING:
    from gateway.admission.accounting import Reservation
    from gateway.request.idempotency import Claim
    from gateway.request.idempotency_entries import KeptImage
    from gateway.state import Gateway

__all__ = [
    "Encode",
    "complete",
    "deliver",
    "produce",
    "record_of",
    "settle",
]

log = structlog.get_logger("gateway.request")

Receive = Callable[[], Awaitable[Any]]
# How a result becomes the answer's body: the dialect's JSON (the default), or a stream's final event.
Encode = Callable[[ImageResult], "bytes | Pieces"]


async def produce(
    gateway: Gateway,
    planned: Planned,
    attempts: Attempts,
    encode: Encode | None = None,
    *,
    receive: Receive | None = None,
    progress: Callable[[Progress], None] | None = None,
    claim: Claim | None = None,
) -> Completed:
    """route (through dedup) ▸ keep for repeats ▸ ``complete``; the one tail of every mode.

    ``receive`` stops the wait when the client hangs up (None: nobody waits on this call, or
    the caller watches the client itself). ``progress`` hears the backend's steps. ``claim``
    keeps the answer for repeats of its Idempotency-Key, or gives the key up when this fails.
    """
    try:
        # A client that hangs up has its request dropped (queued locally) or its upstream call cancelled; a
        # generation shared by identical seeded requests, or answered from the cache: gateway.routing.dedup.
        canonical, plan = planned.canonical, planned.plan
        dedup = gateway.dedup
        result, cache = await dedup.generate(
            planned.key_name, canonical, plan, planned.deadline, attempts, receive, progress
        )
        attempts.answered = result.provider
        kept = None
        if claim is not None:  # its images go to the store now (a URL answer's once, for both)
            kept = await _kept_images(gateway, claim, result, canonical.response_format is ResponseFormat.URL, planned)
        completed = await complete(gateway, planned, result, cache, attempts, encode)
        if claim is not None and kept is not None:
            await claim.keep(completed.headers(), result=result, images=kept)
        return completed
    finally:
        if claim is not None:
            await claim.release()  # nothing, once kept


async def complete(
    gateway: Gateway,
    planned: Planned,
    result: ImageResult,
    cache: str | None,
    attempts: Attempts,
    encode: Encode | None = None,
) -> Completed:
    """deliver ▸ encode ▸ price ▸ energy: the answer for a result, in the client's form and dialect.

    The energy is accounted first: the dialect's body carries ``environment_impact``. An answer
    shared with another request, or from the cache (``cache``), carries its footprint but is not
    counted again (gateway/observability/energy.py).
    """
    canonical = planned.canonical
    used = energy.account(gateway.config, result, planned.plan, spent=cache is None or cache == MISS)
    await deliver(gateway.image_store, result, canonical.response_format, planned.base_url)
    if encode is None:  # large base64 slices stay pieces
        body: bytes | Pieces = encode_answer(planned.endpoint.encode_result(result, canonical), result.images)
    else:
        body = encode(result)
    cost = accounting.cost_of(planned.plan.model, canonical, result)
    return Completed(result, body, cost, used, cache, attempts.calls)


async def deliver(store: ImageStore, result: ImageResult, wanted: ResponseFormat, base_url: str) -> None:
    """Give each image the form the client wants (``schemas.imageforms.conversion`` decides): a stored
    image's URL, under ``base_url``, for bytes when it asked for ``url``.

    One store call per image, all at once; a store that cannot take them is the client's
    ``upstream_error`` (502). Clients that want base64 never reach the store.
    """
    pending = [image for image in result.images if conversion(image, wanted) is Conversion.STORE]
    if not pending:
        return

    async def publish(image: GeneratedImage) -> None:
        data = image.as_bytes()
        assert data is not None, "an image holds a URL, base64 or bytes"
        image.url = store.url(await store.put(data, image.media_type), base_url)

    try:
        await asyncio.gather(*(publish(image) for image in pending))
    except StoreUnavailable as exc:
        raise GatewayError(ErrorCode.UPSTREAM_ERROR, f"the image could not be stored: {exc}") from exc


async def _kept_images(
    gateway: Gateway, claim: Claim, result: ImageResult, wanted_url: bool, planned: Planned
) -> list[KeptImage] | None:
    """The result's images put in the store for repeats; None (and the key given up) when the store fails."""
    assert gateway.idempotency is not None
    try:
        return await gateway.idempotency.keep_images(result, wanted_url, planned.base_url)
    except StoreUnavailable as exc:
        log.warning("idempotency_store_failed", detail=str(exc))
        await claim.release()
        return None


async def settle(gateway: Gateway, reservation: Reservation | None, completed: Completed | None) -> None:
    """The key's budget reserved at admission becomes what the answer cost; all of it comes back for a
    request that got none."""
    if reservation is not None:
        await gateway.admission.settle(reservation, completed.micros if completed is not None else 0)


def record_of(
    endpoint: Endpoint[Any, Any],
    attempts: Attempts,
    outcome: str,
    *,
    model: str,
    key_name: str | None,
    provider: str,
    completed: Completed | None,
) -> RequestRecord:
    """The record of a request (or a job's run) from what its steps returned: images, cost and energy only
    for one that completed."""
    return RequestRecord(
        dialect=endpoint.dialect,
        operation=endpoint.operation.value,
        model=model,
        provider=provider,
        outcome=outcome,
        images=len(completed.result.images) if completed is not None else 0,
        attempts=attempts,
        key=key_name or "none",
        cost=completed.cost if completed is not None else None,
        energy=completed.energy if completed is not None else None,
    )
