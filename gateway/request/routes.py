"""Every inbound route of DIALECTS.md (the ``MOUNTS`` table) and the steps that serve one request.

``serve`` reads the client's dialect into the canonical request, hands it to the router,
puts each image in the form the client asked for, and writes the dialect's answer:
authorize ▸ read body ▸ decode ▸ admit ▸ route ▸ deliver ▸ encode. ``gateway.pipeline``
runs it for every dialect route and renders any failure in the client's own envelope.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from gateway.admission import accounting
from gateway.config import ModelConfig
from gateway.images.store import StoreUnavailable
from gateway.observability import energy, metrics, tracing
from gateway.observability.record import RequestRecord
from gateway.request.idempotency import Claim
from gateway.request.idempotency_entries import REPLAYED_HEADER, KeptImage, Stored, fingerprint
from gateway.request.inbound import ScopeInbound
from gateway.request.modes import Answer, JobTicket
from gateway.request.streams import StreamedAnswer
from gateway.routing.dedup import CACHE_HEADER, MISS
from gateway.routing.failures import current_request_id
from gateway.routing.router import Plan
from gateway.state import Gateway
from schemas.canonical import (
    ErrorCode,
    GatewayError,
    GeneratedImage,
    ImageRequest,
    ImageResult,
    Operation,
    Progress,
    ResponseFormat,
)
from schemas.dialect import BodyKind, Endpoint
from schemas.disconnect import ClientGone, unless_client_leaves
from schemas.imageforms import Conversion, Pieces, conversion, encode_answer

if TYPE_CHECKING:
    from gateway.config import InboundKey

__all__ = ["answer_headers", "deliver", "finish", "serve_recorded"]

log = structlog.get_logger("gateway.request")

JSON = "application/json"
PROVIDER_HEADER = "X-Gateway-Provider"
ATTEMPTS_HEADER = "X-Gateway-Attempts"  # upstream calls made for this request, retries and fallbacks included
COST_HEADER = "X-Gateway-Cost"  # `0.0120 USD`; absent when the target that answered has no price


async def decode_request(endpoint: Endpoint[Any, Any], request: ScopeInbound) -> ImageRequest:
    if endpoint.body_kind is BodyKind.MULTIPART:
        return endpoint.decode_form(await request.form())
    return endpoint.decode_json(await request.body())


def answer_form(canonical: ImageRequest, model: ModelConfig) -> ImageRequest:
    """The request with the form its images are answered in settled: the client's ``response_format``, else
    (where the route lets the model decide: the root /v1 family) the model's ``default_response_format``."""
    if not canonical.response_format_defaulted:
        return canonical
    chosen = model.default_response_format
    wanted = ResponseFormat(chosen) if chosen is not None else canonical.response_format
    return msgspec.structs.replace(canonical, response_format=wanted, response_format_defaulted=False)


async def deliver(gateway: Gateway, result: ImageResult, wanted: ResponseFormat, request: ScopeInbound | str) -> None:
    """Give each image the form the client wants (``schemas.imageforms.conversion`` decides): a stored
    image's URL for bytes when it asked for ``url``.

    One store call per image, all at once; a store that cannot take them is the client's
    ``upstream_error`` (502). Clients that want base64 never reach the store. ``request`` is
    the client's request, or (for a job run after its request ended) the base URL it came to.
    """
    pending = [image for image in result.images if conversion(image, wanted) is Conversion.STORE]
    if not pending:
        return
    store = gateway.image_store
    base_url = gateway.public_base_url or (request if isinstance(request, str) else request.base_url())

    async def publish(image: GeneratedImage) -> None:
        data = image.as_bytes()
        assert data is not None, "an image holds a URL, base64 or bytes"
        image.url = store.url(await store.put(data, image.media_type), base_url)

    try:
        await asyncio.gather(*(publish(image) for image in pending))
    except StoreUnavailable as exc:
        raise GatewayError(ErrorCode.UPSTREAM_ERROR, f"the image could not be stored: {exc}") from exc


async def serve(
    gateway: Gateway, endpoint: Endpoint[Any, Any], request: ScopeInbound, record: RequestRecord
) -> Answer | StreamedAnswer:
    """authorize ▸ read body ▸ decode ▸ admit (inputs, model access, rate limits) ▸ route ▸ deliver ▸ encode.

    With ``Prefer: respond-async`` the last three run detached as a job (``gateway.jobs``). With
    ``stream: true`` the answer after admission is a ``StreamedAnswer`` (``gateway.streams``)
    that routes as its events are sent.
    """
    deadline = time.monotonic() + gateway.config.server.request_deadline_s
    admission = gateway.admission
    key = admission.authorize(request.headers)  # before reading the body: refusals stay cheap
    record.key = key.name if key is not None else "none"
    if key is not None:
        request.holder = f"key:{key.name}"  # its body counts against this key's share of the in-flight budget
    idempotency = gateway.idempotency
    # Idempotency-Key (gateway/request/idempotency.py): a malformed one is refused before the body is read.
    idempotency_key = idempotency.key(request.scope["headers"]) if idempotency is not None else None
    job = await gateway.jobs.accept(key, request) if gateway.jobs is not None else None  # Prefer: respond-async
    canonical = await decode_request(endpoint, request)
    record.prompt = canonical.prompt
    admission.check_inputs(canonical)
    plan = gateway.router.plan(canonical.model)  # the model, resolved once
    record.model = plan.model.name
    canonical = answer_form(canonical, plan.model)
    claim: Claim | None = None
    if idempotency_key is not None:  # a repeat is answered here, before admission: it draws nothing
        assert idempotency is not None
        key_name = key.name if key is not None else None
        route = f"{endpoint.dialect}:{endpoint.operation.value}:{endpoint.path}"
        identity = fingerprint(route, canonical, job is not None)
        while True:
            begun = await idempotency.begin(key_name, idempotency_key, identity, deadline, request.receive)
            if not isinstance(begun, Stored):
                claim = begun
                break
            replayed = await _replay(gateway, endpoint, canonical, begun, request, record)
            if replayed is not None:
                return replayed
            with contextlib.suppress(Exception):  # its images left the store: generate again
                await idempotency.forget(begun.slot)
    try:
        answer = await _admitted(gateway, endpoint, request, record, key, canonical, plan, deadline, job, claim)
    except BaseException as exc:
        if claim is not None and claim.detached is not None:  # it keeps or gives up the key itself
            if isinstance(exc, ClientGone):
                _settle_when_done(gateway, claim.detached, record)
        elif claim is not None:
            await claim.release()  # a failure is not kept: a retry may succeed
        raise
    if claim is not None:  # kept already, unless nothing was kept; a stream's key is given up when it ends
        if isinstance(answer, StreamedAnswer):
            answer.closing.append(claim.release)
        elif claim.detached is None:
            await claim.release()
    return answer


def _settle_when_done(gateway: Gateway, generation: asyncio.Task[Any], record: RequestRecord) -> None:
    """The budget of a client that left while its generation goes on is settled when it ends, at its cost:
    the retry that gets the answer is not charged again."""
    reservation, record.reservation = record.reservation, None
    if reservation is None:
        return
    assert gateway.idempotency is not None

    async def settle() -> None:
        try:
            await generation
        except BaseException:
            actual = 0
        else:
            actual = record.cost.micros if record.cost is not None else 0
        await gateway.admission.settle(reservation, actual)

    gateway.idempotency.background(settle())


async def _admitted(
    gateway: Gateway,
    endpoint: Endpoint[Any, Any],
    request: ScopeInbound,
    record: RequestRecord,
    key: InboundKey | None,
    canonical: ImageRequest,
    plan: Plan,
    deadline: float,
    job: JobTicket | None,
    claim: Claim | None,
) -> Answer | StreamedAnswer:
    """admit ▸ route ▸ deliver ▸ encode (or the job, or the stream); ``claim`` keeps the answer for repeats."""
    admission = gateway.admission
    decision = await admission.admit(key, canonical, plan.model)
    record.reservation = decision.reservation
    rate_headers = decision.headers() if decision.limit or decision.policies else {}
    if (
        job is not None
    ):  # route ▸ deliver ▸ encode run detached (gateway/jobs/service.py), which settles the reservation
        return await job.submit(endpoint, canonical, request, record, rate_headers, claim)
    base_url = gateway.public_base_url or request.base_url()
    if canonical.stream:  # from here on, events: the generation runs as the stream is sent (never shared)
        streamed = msgspec.structs.replace(canonical, response_format=ResponseFormat.B64_JSON)

        async def generate(progress: Callable[[Progress], None]) -> ImageResult:
            try:
                result = await gateway.router.generate(streamed, plan, deadline, record.attempts, progress)
            except BaseException:
                if claim is not None:
                    await claim.release()
                raise
            record.provider, record.images = result.provider, len(result.images)
            record.cost = accounting.cost_of(plan.model, canonical, result)
            record.energy = energy.account(gateway.config, result, plan)
            if claim is not None:
                kept = await _kept_images(gateway, claim, result, False, base_url)
                if kept is not None:
                    await claim.keep(answer_headers(result, record), result=result, images=kept)
            return result

        return StreamedAnswer(endpoint, canonical, request.receive, rate_headers, generate)
    # A client that hangs up has its request dropped (queued locally) or its upstream call cancelled; a
    # generation shared by identical seeded requests, or answered from the cache: gateway.dedup.
    key_name = key.name if key is not None else None
    if claim is None:
        result, cache = await gateway.dedup.generate(
            key_name, canonical, plan, deadline, record.attempts, request.receive
        )
        body = await finish(gateway, endpoint, canonical, result, request, record, plan, cache)
        return Answer(body, {**answer_headers(result, record, cache), **rate_headers})
    # With an Idempotency-Key the generation outlives a client that hangs up (a proxy's timeout): its retry
    # gets the answer instead of drawing it again.
    assert gateway.idempotency is not None
    work = gateway.idempotency.detach(
        claim, _generate_kept(gateway, endpoint, canonical, plan, deadline, record, claim, key_name, base_url)
    )
    body, headers = await unless_client_leaves(request.receive, asyncio.shield(work))
    return Answer(body, {**headers, **rate_headers})


async def _generate_kept(
    gateway: Gateway,
    endpoint: Endpoint[Any, Any],
    canonical: ImageRequest,
    plan: Plan,
    deadline: float,
    record: RequestRecord,
    claim: Claim,
    key_name: str | None,
    base_url: str,
) -> tuple[bytes | Pieces, dict[str, str]]:
    """route ▸ deliver ▸ encode, the answer kept for repeats (or the key given up when it fails)."""
    try:
        result, cache = await gateway.dedup.generate(key_name, canonical, plan, deadline, record.attempts)
        # its images go to the store now (a URL answer's once, for both)
        kept = await _kept_images(gateway, claim, result, canonical.response_format is ResponseFormat.URL, base_url)
        body = await finish(gateway, endpoint, canonical, result, base_url, record, plan, cache)
        headers = answer_headers(result, record, cache)
        if kept is not None:
            await claim.keep(headers, result=result, images=kept)
        return body, headers
    finally:
        await claim.release()  # nothing, once kept


async def _kept_images(
    gateway: Gateway, claim: Claim, result: ImageResult, wanted_url: bool, base_url: str
) -> list[KeptImage] | None:
    """The result's images put in the store for repeats; None (and the key given up) when the store fails."""
    assert gateway.idempotency is not None
    try:
        return await gateway.idempotency.keep_images(result, wanted_url, base_url)
    except StoreUnavailable as exc:
        log.warning("idempotency_store_failed", detail=str(exc))
        await claim.release()
        return None


async def _replay(
    gateway: Gateway,
    endpoint: Endpoint[Any, Any],
    canonical: ImageRequest,
    stored: Stored,
    request: ScopeInbound,
    record: RequestRecord,
) -> Answer | StreamedAnswer | None:
    """The kept answer of the first request under this key; None when its images have left the store."""
    assert gateway.idempotency is not None
    entry = stored.entry
    headers = {**entry.headers, REPLAYED_HEADER: "true", ATTEMPTS_HEADER: "0"}
    if entry.job is not None:  # the first 202 as it was sent: the same job, followed at its Location
        metrics.child(metrics.IDEMPOTENCY, "replayed").inc()
        return Answer((entry.body or "").encode(), headers, entry.status)
    wanted_url = canonical.response_format is ResponseFormat.URL and not canonical.stream
    base_url = gateway.public_base_url or request.base_url()
    result = await gateway.idempotency.result_of(entry, wanted_url, base_url)
    if result is None:
        return None
    metrics.child(metrics.IDEMPOTENCY, "replayed").inc()
    record.provider = entry.headers.get(PROVIDER_HEADER, record.provider)
    if canonical.stream:  # the first result, as the stream's final events

        async def replayed(progress: Callable[[Progress], None]) -> ImageResult:
            return result

        return StreamedAnswer(endpoint, canonical, request.receive, headers, replayed)
    body = encode_answer(endpoint.encode_result(result, canonical), result.images)
    return Answer(body, headers, entry.status)


async def finish(
    gateway: Gateway,
    endpoint: Endpoint[Any, Any],
    canonical: ImageRequest,
    result: ImageResult,
    request: ScopeInbound | str,
    record: RequestRecord,
    plan: Plan,
    cache: str | None,
) -> bytes | Pieces:
    """deliver ▸ encode (and price, and account its energy): the dialect's answer body for a result
    (a request's, or a job's run). ``cache`` is how gateway.dedup answered it."""
    record.provider = result.provider
    record.energy = energy.account(gateway.config, result, plan, spent=cache is None or cache == MISS)
    await deliver(gateway, result, canonical.response_format, request)
    body = encode_answer(endpoint.encode_result(result, canonical), result.images)  # large base64 slices stay pieces
    record.images = len(result.images)
    record.cost = accounting.cost_of(plan.model, canonical, result)
    return body


def answer_headers(result: ImageResult, record: RequestRecord, cache: str | None = None) -> dict[str, str]:
    headers = {PROVIDER_HEADER: result.provider, ATTEMPTS_HEADER: str(record.attempts.calls)}
    if record.cost is not None:
        headers[COST_HEADER] = record.cost.header()
    if cache is not None:
        headers[CACHE_HEADER] = cache
    return headers


async def serve_recorded(
    gateway: Gateway, endpoint: Endpoint[Any, Any], request: ScopeInbound
) -> Answer | StreamedAnswer:
    """``serve``, counted and logged as one request whatever its end (a stream's when its last event is sent)."""
    record = RequestRecord(endpoint.dialect, endpoint.operation.value)
    started = time.perf_counter()
    metrics.IN_FLIGHT.inc()
    streamed = False
    streamed = False
    status: int | None = None  # a failure's own status (the trace's), when it has one
    span = tracing.RequestSpan(request.scope, request.headers, current_request_id()) if tracing.enabled else None
    try:
        answer = await serve(gateway, endpoint, request, record)
        record.outcome = "ok"
        if isinstance(answer, Answer) and answer.status == 202:
            record.outcome = "accepted"
        if isinstance(answer, StreamedAnswer):
            streamed = True
            answer.finish = functools.partial(_stream_finished, gateway, record, started, span, endpoint.operation)
        return answer
    except GatewayError as error:
        endpoint.client_error(error)  # the field in the client's own name (`num_steps`, not `steps`)
        record.outcome = error.code.value
        record.provider = error.provider or record.provider
        error.headers[ATTEMPTS_HEADER] = str(record.attempts.calls)
        status = error.status
        raise
    except ClientGone:
        record.outcome = "client_gone"
        raise
    finally:
        if not streamed:
            await _ended(gateway, record, started, span, endpoint.operation, status)


async def _ended(
    gateway: Gateway,
    record: RequestRecord,
    started: float,
    span: tracing.RequestSpan | None,
    operation: Operation,
    status: int | None,
) -> None:
    metrics.IN_FLIGHT.dec()
    if record.reservation is not None:  # answered: the actual cost; failed: all of it given back
        actual = record.cost.micros if record.outcome == "ok" and record.cost is not None else 0
        await gateway.admission.settle(record.reservation, actual)
    seconds = time.perf_counter() - started
    record.finish(seconds)
    if span is not None:
        span.end(record, operation, status)
    # The console's summary keeps this record for the last few hundred requests: never the client's prompt,
    # which may be megabytes long (three floods of 20 MB prompts held 240 MB each, for good, before).
    record.prompt = None
    gateway.recent_requests.record(current_request_id(), functools.partial(record.summary, seconds))


async def _stream_finished(
    gateway: Gateway,
    record: RequestRecord,
    started: float,
    span: tracing.RequestSpan | None,
    operation: Operation,
    outcome: str,
    error: GatewayError | None,
) -> None:
    record.outcome = outcome
    if error is not None:
        record.provider = error.provider or record.provider
    await _ended(gateway, record, started, span, operation, error.status if error is not None else None)
