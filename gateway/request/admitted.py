"""What admission ends in, and what the tail gives back: the frozen values between the request's steps.

``serve`` (gateway/request/serve.py) ends admission in an ``Admitted``: the request
``Planned`` for its tail (endpoint, canonical request, plan, key, deadline, base URL) and
what admitting it drew (the key's reservation, the rate limits' headers, an Idempotency-Key's
claim). Its mode answers it: plain or streamed (gateway/request/modes.py), or as a job
(``JobTicket``, declared here and implemented by ``gateway.jobs``, which the request path never
imports). Every mode runs the one tail (gateway/request/steps.py), which returns a
``Completed``; a plain answer carries it in its ``Answer``, and the request's record is made
from it. The values are frozen msgspec Structs: made for every request, they cost a tenth of
what frozen dataclasses do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import msgspec

from gateway.routing.dedup import CACHE_HEADER
from gateway.routing.router import Plan
from schemas.canonical import Energy, ImageRequest, ImageResult
from schemas.dialect import Endpoint
from schemas.imageforms import Pieces

if TYPE_CHECKING:
    from litestar.types import Receive

    from gateway.admission.accounting import Cost, Reservation
    from gateway.config import InboundKey
    from gateway.request.idempotency import Claim
    from gateway.request.inbound import ScopeInbound

__all__ = [
    "ATTEMPTS_HEADER",
    "COST_HEADER",
    "PROVIDER_HEADER",
    "Admitted",
    "Answer",
    "Completed",
    "JobIntake",
    "JobTicket",
    "Planned",
]

PROVIDER_HEADER = "X-Gateway-Provider"
ATTEMPTS_HEADER = "X-Gateway-Attempts"  # upstream calls made for this request, retries and fallbacks included
COST_HEADER = "X-Gateway-Cost"  # `0.0120 USD`; absent when the target that answered has no price


class Planned(msgspec.Struct, frozen=True):
    """A request ready for its tail: the same values for a request served now and a job run later."""

    endpoint: Endpoint[Any, Any]
    canonical: ImageRequest  # with the form its images are answered in settled
    plan: Plan  # the model, resolved once
    key_name: str | None  # the inbound key's (dedup shares generations within one key)
    deadline: float  # on time.monotonic()
    base_url: str  # stored images' URLs start here: the public base URL, else the one the client came to


class Admitted(msgspec.Struct, frozen=True):
    """What admission ends in: the request ready for its tail, and what admitting it drew."""

    planned: Planned
    key: InboundKey | None
    reservation: Reservation | None  # of the key's budget; its mode settles it (gateway/request/modes.py)
    rate_headers: Mapping[str, str]  # the rate limits' headers, on every answer
    claim: Claim | None = None  # the Idempotency-Key this request answers for, if any


class Completed(msgspec.Struct, frozen=True):
    """A result made into an answer: what the client is sent, and what the request's record counts."""

    result: ImageResult  # its images delivered, its ``environment_impact`` filled where known
    body: bytes | Pieces  # the dialect's answer, or a stream's final event
    cost: Cost | None  # None: the target that answered has no price
    energy: Energy | None  # None: not known
    cache: str | None  # how dedup answered it (``X-Gateway-Cache``); None: not a request that is shared
    calls: int  # upstream calls made for it

    @property
    def micros(self) -> int:
        """What the key's budget is charged: the cost, or nothing for an unpriced answer."""
        return self.cost.micros if self.cost is not None else 0

    def headers(self) -> dict[str, str]:
        """The headers the gateway adds to the answer: who answered, in how many calls, at what cost."""
        headers = {PROVIDER_HEADER: self.result.provider, ATTEMPTS_HEADER: str(self.calls)}
        if self.cost is not None:
            headers[COST_HEADER] = self.cost.header()
        if self.cache is not None:
            headers[CACHE_HEADER] = self.cache
        return headers


class Answer(NamedTuple):
    """A dialect answer: its JSON body, the headers the gateway adds, its status, and the tail's value it
    carries (None: an answer that completed no result here, a replay's or a job's)."""

    body: bytes | Pieces
    headers: dict[str, str]
    status: int = 200
    completed: Completed | None = None


class JobTicket(Protocol):
    """A request that asked to run as a job, checked before its body was read: the job mode."""

    async def answer(self, admitted: Admitted, receive: Receive) -> Answer:
        """Queue the admitted request (its reservation passes to the job); ``202``, or the plain answer when
        the job ends within the client's ``wait``. Its ``claim`` keeps the ``202`` for an Idempotency-Key's
        repeats."""
        ...


class JobIntake(Protocol):
    """What the request path asks of the jobs (whether a request runs as one), and the console (a summary)."""

    async def accept(self, key: InboundKey | None, request: ScopeInbound) -> JobTicket | None:
        """None for a plain call; else its ticket. A malformed ``Prefer`` or webhook is refused here (400)."""
        ...

    async def summary(self) -> dict[str, Any]:
        """For the console: the queue and this process's jobs by status."""
        ...
