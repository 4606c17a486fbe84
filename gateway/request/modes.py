"""The three forms a request's answer takes, chosen once before admission: plain, streamed, or a job.

``serve`` (gateway/request/serve.py) picks the request's ``Mode`` once, and hands it the
``Admitted`` value admission ends in, at one point:

- ``Plain``: the tail (``gateway.request.steps.produce``) now; its answer is an ``Answer``;
- ``Streamed``: a ``StreamedAnswer`` (gateway/request/streams.py) whose final event the same
  tail makes as the events are sent;
- a job: ``JobTicket`` (gateway/request/admitted.py), implemented by ``gateway.jobs``, whose
  consumers run the same tail later. The request path imports nothing from ``gateway.jobs``.

Each mode settles the key's budget reserved at admission, at what the answer cost (all of it
back for none): a plain answer when its tail ends (in the task that outlives a client that
hangs up, with an Idempotency-Key), a stream when it ends, a job when it ends (or at once, when
it is not queued).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, NamedTuple, Protocol

import msgspec
from litestar.types import Receive

from gateway.request.admitted import Admitted, Answer, Completed
from gateway.request.steps import produce, settle
from gateway.request.streams import Final, StreamedAnswer, completed_event
from gateway.routing.attempts import Attempts
from schemas.canonical import Progress, ResponseFormat
from schemas.disconnect import unless_client_leaves

if TYPE_CHECKING:
    from gateway.admission.accounting import Reservation
    from gateway.state import Gateway

__all__ = ["Mode", "Plain", "Streamed"]


class Mode(Protocol):
    """How an admitted request is answered (a ``JobTicket`` is one too)."""

    async def answer(self, admitted: Admitted, receive: Receive) -> Answer | StreamedAnswer:
        """The answer; ``receive`` tells when the client hangs up."""
        ...


class Plain(NamedTuple):
    """The answer once the tail has run: the dialect's JSON body."""

    gateway: Gateway
    attempts: Attempts

    async def answer(self, admitted: Admitted, receive: Receive) -> Answer:
        gateway, planned, claim = self.gateway, admitted.planned, admitted.claim
        if claim is None:
            tail = produce(gateway, planned, self.attempts, receive=receive)
            completed = await _settled(gateway, admitted.reservation, tail)
        else:
            # With an Idempotency-Key the generation outlives a client that hangs up (a proxy's timeout): its
            # retry gets the answer instead of drawing it again, and the budget is settled when it ends.
            assert gateway.idempotency is not None
            tail = produce(gateway, planned, self.attempts, claim=claim)
            work = gateway.idempotency.detach(claim, _settled(gateway, admitted.reservation, tail))
            completed = await unless_client_leaves(receive, asyncio.shield(work))
        return Answer(completed.body, {**completed.headers(), **admitted.rate_headers}, completed=completed)


class Streamed(NamedTuple):
    """Server-sent events: the generation runs as the stream is sent; the tail makes its final event."""

    gateway: Gateway
    attempts: Attempts

    async def answer(self, admitted: Admitted, receive: Receive) -> StreamedAnswer:
        gateway, planned = self.gateway, admitted.planned
        canonical = planned.canonical
        # The events carry base64 images; the final one states the settings the client asked for.
        as_b64 = msgspec.structs.replace(canonical, response_format=ResponseFormat.B64_JSON)
        streamed = msgspec.structs.replace(planned, canonical=as_b64)
        encode = functools.partial(completed_event, canonical)

        async def final(progress: Callable[[Progress], None]) -> Final:
            completed = await produce(gateway, streamed, self.attempts, encode, progress=progress, claim=admitted.claim)
            assert isinstance(completed.body, bytes)
            return Final(completed.body, completed)

        answer = StreamedAnswer(planned.endpoint, canonical, receive, dict(admitted.rate_headers), final)
        answer.closing.append(lambda: settle(gateway, admitted.reservation, answer.completed))
        return answer


async def _settled(gateway: Gateway, reservation: Reservation | None, tail: Awaitable[Completed]) -> Completed:
    """The tail, and the key's budget settled at what it cost (all of it back when it fails)."""
    completed = None
    try:
        completed = await tail
        return completed
    finally:
        await settle(gateway, reservation, completed)
