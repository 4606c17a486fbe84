"""Async jobs: ``Prefer: respond-async`` on every dialect route, run detached by this process's consumers.

``serve`` (gateway/request/serve.py) does everything before generation at submit (auth, decode,
admission, rate limits) and hands the admitted request to the job's ``Ticket`` (the job mode of
gateway/request/admitted.py): ``submit`` stores it and answers ``202`` (or, with ``wait=N``, the
plain answer when the job ends within N seconds). A consumer (``jobs.consumers`` per process)
takes the job from the queue (``gateway.jobs.queue``) and runs the tail every request runs on it
(``gateway.request.steps.produce``: route ▸ deliver ▸ encode), storing the body the plain call
would have answered, or the dialect's error body. The job routes (gateway/jobs/routes.py) read,
follow (server-sent events, ``gateway.request.sse``) and cancel jobs. docs/operations.md,
"Async jobs", has the decisions.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple

import msgspec
import structlog
from litestar.types import Receive
from redis.exceptions import RedisError

from gateway.config import InboundKey
from gateway.jobs.prefer import Preferences, parse_prefer, prefer_headers
from gateway.jobs.queue import (
    CANCELED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    JobProgress,
    JobQueue,
    JobRecord,
    MemoryJobQueue,
    QueueFull,
    job_body,
)
from gateway.jobs.redis_queue import RedisJobQueue
from gateway.jobs.runner import POLL_S, JobRunner
from gateway.jobs.webhooks import WebhookTarget
from gateway.request import sse
from gateway.request.admitted import Admitted, Answer
from gateway.request.idempotency import Claim
from gateway.request.inbound import ScopeInbound
from gateway.request.mounts import route_of
from gateway.routing.failures import current_request_id
from gateway.state import Gateway
from schemas.canonical import ErrorCode, GatewayError, encode_hook
from schemas.disconnect import unless_client_leaves

__all__ = ["JOBS_PATH", "Jobs", "build_job_queue"]

log = structlog.get_logger("gateway.jobs")

JOBS_PATH = "/v1/jobs"
QUEUE_FULL_RETRY_AFTER_S = 10  # Retry-After of a submit refused for the bytes queued (they free as jobs end)


def build_job_queue(gateway: Gateway) -> JobQueue:
    config = gateway.config
    jobs = config.jobs
    if config.redis.url:
        return RedisJobQueue(
            config.redis.url,
            config.redis.key_prefix,
            jobs.ttl_s,
            jobs.claim_after_s,
            max_bytes=jobs.max_queued_bytes,
            max_bytes_per_key=jobs.max_queued_bytes_per_key,
        )
    return MemoryJobQueue(jobs.ttl_s, max_bytes=jobs.max_queued_bytes, max_bytes_per_key=jobs.max_queued_bytes_per_key)


@contextlib.asynccontextmanager
async def store_errors() -> AsyncIterator[None]:
    """A job store (Redis) that cannot be reached is ``overloaded`` (503) for the client, not a 500."""
    try:
        yield
    except (RedisError, OSError) as exc:
        log.warning("job_store_unavailable", error=f"{type(exc).__name__}: {exc}")
        raise GatewayError(ErrorCode.OVERLOADED, "the job store is unavailable; try again later", public=True) from exc


class Ticket(NamedTuple):
    """A request that asked to run as a job, checked before its body was read: the job mode of
    gateway/request/modes.py (its key is the admitted request's)."""

    jobs: Jobs
    preferences: Preferences
    webhook: WebhookTarget | None

    async def answer(self, admitted: Admitted, receive: Receive) -> Answer:
        return await self.jobs.submit(self, admitted, receive, _keeper(admitted.claim))


def _keeper(claim: Claim | None) -> Callable[[JobRecord], Awaitable[None]] | None:
    """What keeps a job submission's answer (its job) under its Idempotency-Key as soon as it is queued."""
    if claim is None:
        return None

    async def queued(job: JobRecord) -> None:
        body = msgspec.json.encode({"id": job.id, "status": QUEUED, "created_at": job.created_at})
        headers = {"Location": f"{JOBS_PATH}/{job.id}", "Preference-Applied": "respond-async"}
        await claim.keep(headers, job=job.id, body=body, status=202)

    return queued


class Jobs(JobRunner):
    """Submit, read, follow and cancel jobs, and run them with ``jobs.consumers`` consumers per process."""

    # --- submit

    async def accept(self, key: InboundKey | None, request: ScopeInbound) -> Ticket | None:
        """What ``serve`` asks before the body is read: None for a plain call, else the job's ticket.

        A malformed ``Prefer`` and a webhook URL the key may not call are refused here (400), so
        neither reads a body nor spends a rate limit.
        """
        preferences = parse_prefer(prefer_headers(request.scope["headers"]))
        if not preferences.respond_async:
            return None
        url = request.headers.get("x-webhook-url")
        webhooks = self.gateway.webhooks
        key_name = key.name if key is not None else None
        # A named URL's host is resolved: off the event loop.
        webhook = await webhooks.target_async(key_name, url) if url else webhooks.target(key_name, None)
        return Ticket(self, preferences, webhook)

    async def submit(
        self,
        ticket: Ticket,
        admitted: Admitted,
        receive: Receive,
        queued: Callable[[JobRecord], Awaitable[None]] | None = None,
    ) -> Answer:
        """Store and queue a job; ``202`` with its place, or the plain answer when it ends within ``wait``.

        The admitted request's reservation of the key's budget passes to the job, which settles it when it
        ends; one that is not queued gives it all back at once. ``queued`` hears of the job as soon as it is
        queued (an Idempotency-Key keeps it: request/idempotency.py).
        """
        async with store_errors():
            try:
                job = await self._queue(ticket, admitted)
            except BaseException:
                if admitted.reservation is not None:
                    await self.gateway.admission.settle(admitted.reservation, 0)
                raise
            preferences, rate_headers = ticket.preferences, admitted.rate_headers
            self._transition(job, "submitted")
            if queued is not None:
                await queued(job)
            if preferences.wait:  # a client that hangs up while it waits leaves the job running
                waited = self.wait(job.id, min(preferences.wait, self.settings.max_wait_s))
                done = await unless_client_leaves(receive, waited)
                if done is not None and done.status == SUCCEEDED and done.result is not None:
                    return Answer(done.result.encode(), {**done.headers, **rate_headers})
                if done is not None and done.status == FAILED and done.failure is not None:
                    failure = done.failure
                    raise GatewayError(
                        ErrorCode(failure.code),
                        failure.message,
                        param=failure.param,
                        status=failure.status,
                        headers=dict(failure.headers),
                        public=True,
                    )
            body = msgspec.json.encode({"id": job.id, "status": QUEUED, "created_at": job.created_at})
            headers = {"Location": f"{JOBS_PATH}/{job.id}", "Preference-Applied": "respond-async", **rate_headers}
            return Answer(body, headers, 202)

    async def _queue(self, ticket: Ticket, admitted: Admitted) -> JobRecord:
        """The job of an admitted request, stored and queued with its reservation."""
        planned = admitted.planned
        if planned.canonical.stream:  # a job's result is the JSON answer; events are at /v1/jobs/{id}/events
            raise GatewayError(
                ErrorCode.INVALID_REQUEST,
                "`stream` cannot be combined with `Prefer: respond-async`; follow the job's events instead",
                param="stream",
                public=True,
            )
        if await self.queue.waiting() >= self.settings.max_queued:
            raise GatewayError(ErrorCode.OVERLOADED, "too many jobs are waiting; try again later", public=True)
        now = int(time.time())
        job = JobRecord(
            id=secrets.token_urlsafe(24),
            key=planned.key_name,
            route=route_of(planned.endpoint),
            status=QUEUED,
            created_at=now,
            updated_at=now,
            request_id=current_request_id(),
            base_url=planned.base_url,
        )
        job.webhook = ticket.webhook
        job.reservation = admitted.reservation  # of the key's budget: the job settles it when it ends
        await self._put(job, msgspec.msgpack.encode(planned.canonical, enc_hook=encode_hook))
        return job

    async def _put(self, job: JobRecord, payload: bytes) -> None:
        """Queue the job; past the bytes its key may queue a ``rate_limited`` (429), past all of them an
        ``overloaded`` (503), both with a Retry-After (the bytes come back as jobs end)."""
        try:
            await self.queue.put(job, payload)
        except QueueFull as full:
            log.warning("job_queue_full", per_key=full.per_key, size=full.size, key_name=job.key)
            if full.per_key:
                raise GatewayError(
                    ErrorCode.RATE_LIMITED,
                    "this key's queued jobs hold as many bytes as it may queue; try again when some have ended",
                    retry_after=QUEUE_FULL_RETRY_AFTER_S,
                    public=True,
                ) from None
            raise GatewayError(
                ErrorCode.OVERLOADED,
                "the queued jobs hold as many bytes as the gateway keeps; try again later",
                retry_after=QUEUE_FULL_RETRY_AFTER_S,
                public=True,
            ) from None

    async def wait(self, job_id: str, seconds: float) -> JobRecord | None:
        """The job once it has ended, or None when it has not within ``seconds``."""
        deadline = time.monotonic() + seconds
        while True:
            found = await self.queue.get(job_id)
            if found is not None and found[0].status in TERMINAL:
                return found[0]
            left = deadline - time.monotonic()
            if left <= 0 or found is None:
                return None
            await asyncio.sleep(min(POLL_S, left))

    # --- read, follow, cancel

    async def find(self, job_id: str, key: InboundKey | None) -> tuple[JobRecord, JobProgress | None]:
        """The job, if the caller's key made it; a 404 for a job of another key, as for one that is not there."""
        async with store_errors():
            found = await self.queue.get(job_id) if job_id else None
        if found is None or found[0].key != (key.name if key is not None else None):
            raise GatewayError(ErrorCode.INVALID_REQUEST, "no such job, or it has expired", status=404, public=True)
        return found

    async def cancel(self, job_id: str, key: InboundKey | None) -> dict[str, Any]:
        """Cancel a job: a queued one never runs; a running one has its generation cancelled."""
        job, progress = await self.find(job_id, key)
        if job.status in TERMINAL:
            raise GatewayError(
                ErrorCode.INVALID_REQUEST, f"the job has already ended ({job.status})", status=409, public=True
            )
        job.status, job.updated_at = CANCELED, int(time.time())
        async with store_errors():
            await self.queue.request_cancel(job.id)  # the process running it stops it
            stored = await self.queue.replace(job, frozenset({QUEUED, RUNNING}))
        if not stored:  # it ended meanwhile
            job, progress = await self.find(job_id, key)
            return job_body(job, progress)
        self._transition(job, "canceled by the client")  # its webhook: by the process that takes its entry
        await self._settle(job, 0)
        return job_body(job, progress)

    async def events(self, job: JobRecord, progress: JobProgress | None) -> AsyncIterator[bytes]:
        """Server-sent events: ``status`` and ``progress`` as they change, then ``result`` (the GET body)."""
        sent_status: str | None = None
        sent_progress: JobProgress | None = None
        number = 0
        quiet_since = time.monotonic()
        while True:
            if job.status != sent_status:
                number += 1
                sent_status = job.status
                yield _event(number, "status", {"id": job.id, "status": job.status, "updated_at": job.updated_at})
                quiet_since = time.monotonic()
            if progress is not None and progress != sent_progress:
                number += 1
                sent_progress = progress
                yield _event(number, "progress", {"step": progress.step, "steps": progress.steps})
                quiet_since = time.monotonic()
            if job.status in TERMINAL:
                yield _event(number + 1, "result", job_body(job, progress))
                return
            if time.monotonic() - quiet_since >= sse.KEEPALIVE_S:
                yield sse.KEEPALIVE  # proxies keep a quiet stream open
                quiet_since = time.monotonic()
            await asyncio.sleep(POLL_S)
            found = await self.queue.get(job.id)
            if found is None:  # expired while followed
                return
            job, progress = found


def _event(number: int, kind: str, data: dict[str, Any]) -> bytes:
    return sse.frame(msgspec.json.encode(data), kind, number)
