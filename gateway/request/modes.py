"""The three forms a request's answer takes, chosen once after admission: plain, streamed, or a job.

A plain answer is an ``Answer``; a streamed one a ``StreamedAnswer`` (``gateway.request.streams``).
A job is declared here and implemented by ``gateway.jobs``: the request path asks the
``JobIntake`` on the ``Gateway`` whether a request runs as a job (before its body is read),
and hands an admitted one to its ``JobTicket``. The request path imports nothing from
``gateway.jobs``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from schemas.canonical import ImageRequest
from schemas.dialect import Endpoint
from schemas.imageforms import Pieces

if TYPE_CHECKING:
    from gateway.config import InboundKey
    from gateway.observability.record import RequestRecord
    from gateway.request.idempotency import Claim
    from gateway.request.inbound import ScopeInbound

__all__ = ["Answer", "JobIntake", "JobTicket"]


class Answer(NamedTuple):
    """A dialect answer: its JSON body, the headers the gateway adds, and its status."""

    body: bytes | Pieces
    headers: dict[str, str]
    status: int = 200


class JobTicket(Protocol):
    """A request that asked to run as a job, checked before its body was read."""

    async def submit(
        self,
        endpoint: Endpoint[Any, Any],
        canonical: ImageRequest,
        request: ScopeInbound,
        record: RequestRecord,
        rate_headers: dict[str, str],
        claim: Claim | None,
    ) -> Answer:
        """Queue the admitted request (its reservation passes to the job); ``202``, or the plain answer when
        the job ends within the client's ``wait``. ``claim`` keeps the ``202`` for an Idempotency-Key's repeats."""
        ...


class JobIntake(Protocol):
    """What the request path asks of the jobs (whether a request runs as one), and the console (a summary)."""

    async def accept(self, key: InboundKey | None, request: ScopeInbound) -> JobTicket | None:
        """None for a plain call; else its ticket. A malformed ``Prefer`` or webhook is refused here (400)."""
        ...

    async def summary(self) -> dict[str, Any]:
        """For the console: the queue and this process's jobs by status."""
        ...
