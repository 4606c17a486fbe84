"""Serving one dialect request: authorize ▸ read body ▸ decode ▸ plan ▸ admit, then its mode answers.

``serve_recorded`` is what ``gateway.request.pipeline`` calls for every dialect route (the
``MOUNTS`` table): ``serve``, counted and logged once whatever its end. ``serve`` reads the
client's dialect into the canonical request, chooses its mode once (plain, streamed, or a
job: ``gateway.request.modes``), answers a repeat of an Idempotency-Key from what was kept,
admits it (inputs, model access, rate limits, budget) into a frozen ``Admitted``, and hands
that to the mode, which runs the one tail (``gateway.request.steps``).

The request's record is made when it ends, from what the steps returned (a ``Trail``: the
key, the canonical request, the plan; the tail's ``Completed``; the failure), never written
into as it goes.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.config import ModelConfig
from gateway.observability import metrics, tracing
from gateway.request.admitted import (
    ATTEMPTS_HEADER,
    PROVIDER_HEADER,
    Admitted,
    Answer,
    Completed,
    JobTicket,
    Planned,
)
from gateway.request.idempotency import Claim
from gateway.request.idempotency_entries import REPLAYED_HEADER, Stored, fingerprint
from gateway.request.inbound import ScopeInbound
from gateway.request.modes import Mode, Plain, Streamed
from gateway.request.steps import record_of
from gateway.request.streams import Final, StreamedAnswer, completed_event
from gateway.routing.attempts import Attempts
from gateway.routing.failures import current_request_id
from gateway.routing.router import Plan
from gateway.state import Gateway
from schemas.canonical import GatewayError, ImageRequest, Progress, ResponseFormat
from schemas.dialect import BodyKind, Endpoint
from schemas.disconnect import ClientGone
from schemas.imageforms import encode_answer

if TYPE_CHECKING:
    from gateway.config import InboundKey

__all__ = ["JSON", "Trail", "serve", "serve_recorded"]

JSON = "application/json"


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


@dataclass
class Trail:
    """What ``serve``'s steps returned, each set once as it returns: the request's record is made from it."""

    attempts: Attempts = field(default_factory=Attempts)  # the router's calls, as it makes them
    key: InboundKey | None = None  # authorize
    canonical: ImageRequest | None = None  # decode (the record logs its prompt)
    plan: Plan | None = None  # plan (the record names its model)
    replayed: str | None = None  # the provider of a kept answer, when a repeat was answered from it


async def serve(
    gateway: Gateway, endpoint: Endpoint[Any, Any], request: ScopeInbound, trail: Trail
) -> Answer | StreamedAnswer:
    """authorize ▸ read body ▸ decode ▸ plan ▸ admit (inputs, model access, rate limits) ▸ the mode's answer.

    With ``Prefer: respond-async`` the mode is a job (``gateway.jobs``); with ``stream: true``
    the answer after admission is a ``StreamedAnswer`` (``gateway.request.streams``) that
    routes as its events are sent; else the plain answer.
    """
    deadline = time.monotonic() + gateway.config.server.request_deadline_s
    admission = gateway.admission
    key = trail.key = admission.authorize(request.headers)  # before reading the body: refusals stay cheap
    if key is not None:
        request.holder = f"key:{key.name}"  # its body counts against this key's share of the in-flight budget
    idempotency = gateway.idempotency
    # Idempotency-Key (gateway/request/idempotency.py): a malformed one is refused before the body is read.
    idempotency_key = idempotency.key(request.scope["headers"]) if idempotency is not None else None
    job = await gateway.jobs.accept(key, request) if gateway.jobs is not None else None  # Prefer: respond-async
    canonical = trail.canonical = await decode_request(endpoint, request)
    admission.check_inputs(canonical)
    plan = trail.plan = gateway.router.plan(canonical.model)  # the model, resolved once
    canonical = answer_form(canonical, plan.model)
    key_name = key.name if key is not None else None
    base_url = gateway.public_base_url or request.base_url()
    planned = Planned(endpoint, canonical, plan, key_name, deadline, base_url)
    mode = _mode(gateway, job, canonical, trail.attempts)  # chosen once
    claim: Claim | None = None
    if idempotency_key is not None:  # a repeat is answered here, before admission: it draws nothing
        assert idempotency is not None
        route = f"{endpoint.dialect}:{endpoint.operation.value}:{endpoint.path}"
        identity = fingerprint(route, canonical, job is not None)
        while True:
            begun = await idempotency.begin(key_name, idempotency_key, identity, deadline, request.receive)
            if not isinstance(begun, Stored):
                claim = begun
                break
            replayed = await _replay(gateway, planned, begun, request, trail)
            if replayed is not None:
                return replayed
            with contextlib.suppress(Exception):  # its images left the store: generate again
                await idempotency.forget(begun.slot)
    try:
        decision = await admission.admit(key, canonical, plan.model)
        rate_headers = decision.headers() if decision.limit or decision.policies else {}
        admitted = Admitted(planned, key, decision.reservation, rate_headers, claim)
        answer = await mode.answer(admitted, request.receive)
    except BaseException:
        if claim is not None and claim.detached is None:  # a detached generation keeps or gives up the key itself
            await claim.release()  # a failure is not kept: a retry may succeed
        raise
    if claim is not None:  # kept already, unless nothing was kept; a stream's key is given up when it ends
        if isinstance(answer, StreamedAnswer):
            answer.closing.append(claim.release)
        elif claim.detached is None:
            await claim.release()
    return answer


def _mode(gateway: Gateway, job: JobTicket | None, canonical: ImageRequest, attempts: Attempts) -> Mode:
    """A job (``Prefer: respond-async``), a stream (``stream: true``), or the plain answer."""
    if job is not None:
        return job
    if canonical.stream:
        return Streamed(gateway, attempts)
    return Plain(gateway, attempts)


async def _replay(
    gateway: Gateway, planned: Planned, stored: Stored, request: ScopeInbound, trail: Trail
) -> Answer | StreamedAnswer | None:
    """The kept answer of the first request under this key; None when its images have left the store."""
    assert gateway.idempotency is not None
    entry = stored.entry
    headers = {**entry.headers, REPLAYED_HEADER: "true", ATTEMPTS_HEADER: "0"}
    if entry.job is not None:  # the first 202 as it was sent: the same job, followed at its Location
        metrics.child(metrics.IDEMPOTENCY, "replayed").inc()
        return Answer((entry.body or "").encode(), headers, entry.status)
    canonical = planned.canonical
    wanted_url = canonical.response_format is ResponseFormat.URL and not canonical.stream
    result = await gateway.idempotency.result_of(entry, wanted_url, planned.base_url)
    if result is None:
        return None
    metrics.child(metrics.IDEMPOTENCY, "replayed").inc()
    trail.replayed = entry.headers.get(PROVIDER_HEADER)
    if canonical.stream:  # the first result, as the stream's final events

        async def replayed(progress: Callable[[Progress], None]) -> Final:
            return Final(completed_event(canonical, result))

        return StreamedAnswer(planned.endpoint, canonical, request.receive, headers, replayed)
    body = encode_answer(planned.endpoint.encode_result(result, canonical), result.images)
    return Answer(body, headers, entry.status)


async def serve_recorded(
    gateway: Gateway, endpoint: Endpoint[Any, Any], request: ScopeInbound
) -> Answer | StreamedAnswer:
    """``serve``, counted and logged as one request whatever its end (a stream's when its last event is sent)."""
    trail = Trail()
    started = time.perf_counter()
    metrics.IN_FLIGHT.inc()
    span = tracing.RequestSpan(request.scope, request.headers, current_request_id()) if tracing.enabled else None
    ended = functools.partial(_ended, gateway, endpoint, trail, started, span)
    outcome, failure, answer = "internal", None, None
    try:
        answer = await serve(gateway, endpoint, request, trail)
        if isinstance(answer, StreamedAnswer):
            answer.finish = ended  # the request ends with its stream
            return answer
        outcome = "accepted" if answer.status == 202 else "ok"
        return answer
    except GatewayError as error:
        endpoint.client_error(error)  # the field in the client's own name (`num_steps`, not `steps`)
        outcome, failure = error.code.value, error
        error.headers[ATTEMPTS_HEADER] = str(trail.attempts.calls)
        raise
    except ClientGone:
        outcome = "client_gone"
        raise
    finally:
        if not isinstance(answer, StreamedAnswer):
            await ended(outcome, failure, answer.completed if answer is not None else None)


async def _ended(
    gateway: Gateway,
    endpoint: Endpoint[Any, Any],
    trail: Trail,
    started: float,
    span: tracing.RequestSpan | None,
    outcome: str,
    failure: GatewayError | None,
    completed: Completed | None,
) -> None:
    """The request's record, made from what its steps returned; counted, logged, traced and kept for the console."""
    metrics.IN_FLIGHT.dec()
    seconds = time.perf_counter() - started
    attempts = trail.attempts
    provider = (failure.provider if failure is not None else None) or attempts.answered or trail.replayed
    record = record_of(
        endpoint,
        attempts,
        outcome,
        model=trail.plan.model.name if trail.plan is not None else "unknown",
        key_name=trail.key.name if trail.key is not None else None,
        provider=provider or "none",
        completed=completed,
    )
    record.finish(seconds, trail.canonical.prompt if trail.canonical is not None else None)
    if span is not None:
        span.end(record, endpoint.operation, failure.status if failure is not None else None)
    # The console's summary keeps this record for the last few hundred requests: it never holds the client's
    # prompt, which may be megabytes long (three floods of 20 MB prompts held 240 MB each, for good, before).
    gateway.recent_requests.record(current_request_id(), functools.partial(record.summary, seconds))
