"""Async jobs: ``Prefer: respond-async`` on every dialect route, run detached by this process's consumers.

``serve`` (gateway/routes.py) does everything before generation at submit (auth, decode,
admission, rate limits) and hands the canonical request here: ``submit`` stores it and
answers ``202`` (or, with ``wait=N``, the plain answer when the job ends within N seconds).
A consumer (``jobs.consumers`` per process) takes the job from the queue
(``gateway.jobqueue``) and runs the rest of ``serve`` on it: route ▸ deliver ▸ encode
(``Router.generate`` and ``routes.finish``), storing the body the plain call would have
answered, or the dialect's error body. The job routes (gateway/jobroutes.py) read, follow
and cancel jobs. docs/operations.md, "Async jobs", has the decisions.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple

import msgspec
import structlog
from redis.exceptions import RedisError

from gateway import metrics
from gateway.config import InboundKey
from gateway.failures import current_request_id
from gateway.inbound import ScopeInbound
from gateway.jobqueue import (
    CANCELED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    JobError,
    JobProgress,
    JobQueue,
    JobRecord,
    MemoryJobQueue,
    QueueFull,
    RedisJobQueue,
    Taken,
)
from gateway.prefer import Preferences, parse_prefer, prefer_headers
from gateway.redis_health import resume_cancel
from gateway.routes import MOUNTS, Answer, Mount, RequestRecord, answer_headers, finish
from gateway.shutdown import bounded
from gateway.state import Gateway
from gateway.webhooks import WebhookTarget
from schemas.canonical import ErrorCode, GatewayError, ImageRequest, Progress, decode_hook, encode_hook
from schemas.dialect import Endpoint, error_answer
from schemas.disconnect import unless_client_leaves

__all__ = ["JOBS_PATH", "Jobs", "build_job_queue"]

log = structlog.get_logger("gateway.jobs")

JOBS_PATH = "/v1/jobs"
POLL_S = 0.25  # how often a waiting answer, an event stream and a running job's cancel check look again
STOP_S = 1.0  # at shutdown: how long cancelled jobs get to unwind, and the queue to close
QUEUE_FULL_RETRY_AFTER_S = 10  # Retry-After of a submit refused for the bytes queued (they free as jobs end)
HAND_BACK_S = 2.0  # at shutdown: how long handing the unfinished jobs back to the queue may take
# Mounts by the route a job names: the first mount of each endpoint (a prefix and the root share a table).
_MOUNTS: dict[str, Mount] = {}
for _mount in MOUNTS:
    _MOUNTS.setdefault(_mount.prefix + _mount.endpoint.path, _mount)


def _route_of(endpoint: Endpoint[Any, Any]) -> str:
    return next(route for route, mount in _MOUNTS.items() if mount.endpoint is endpoint)


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


def job_body(record: JobRecord, progress: JobProgress | None) -> dict[str, Any]:
    """What ``GET /v1/jobs/{id}`` answers."""
    body: dict[str, Any] = {
        "id": record.id,
        "status": record.status,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }
    if progress is not None:
        body["progress"] = {"step": progress.step, "steps": progress.steps}
    if record.result is not None:
        body["result"] = msgspec.Raw(record.result.encode())
    if record.error is not None:
        body["error"] = msgspec.Raw(record.error.encode())
    if record.webhook is not None:
        body["webhooks"] = record.webhooks  # each attempt: {attempt, at, status, error}; [] until the job ends
    return body


class _ProgressWriter:
    """Coalesces a backend's progress calls (on the event loop, per step) into at most one write at a time."""

    def __init__(self, queue: JobQueue, job_id: str) -> None:
        self.queue = queue
        self.job_id = job_id
        self.latest: JobProgress | None = None
        self.task: asyncio.Task[None] | None = None

    def __call__(self, progress: Progress) -> None:
        self.latest = JobProgress(step=progress.step, steps=progress.steps)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._write())

    async def _write(self) -> None:
        written: JobProgress | None = None
        while self.latest is not None and self.latest != written:
            written = self.latest
            try:
                await self.queue.set_progress(self.job_id, written)
            except Exception as exc:  # progress is a courtesy: a failed write never fails the job
                log.warning("job_progress_not_stored", job_id=self.job_id, error=type(exc).__name__)
                return

    async def aclose(self) -> None:
        if self.task is not None:
            with contextlib.suppress(Exception):
                await self.task


@contextlib.asynccontextmanager
async def store_errors() -> AsyncIterator[None]:
    """A job store (Redis) that cannot be reached is ``overloaded`` (503) for the client, not a 500."""
    try:
        yield
    except (RedisError, OSError) as exc:
        log.warning("job_store_unavailable", error=f"{type(exc).__name__}: {exc}")
        raise GatewayError(ErrorCode.OVERLOADED, "the job store is unavailable; try again later", public=True) from exc


class Ticket(NamedTuple):
    """A request that asked to run as a job, checked before its body was read."""

    jobs: Jobs
    key: InboundKey | None
    preferences: Preferences
    webhook: WebhookTarget | None

    async def submit(
        self,
        endpoint: Endpoint[Any, Any],
        canonical: ImageRequest,
        request: ScopeInbound,
        record: RequestRecord,
        rate_headers: dict[str, str],
        queued: Callable[[JobRecord], Awaitable[None]] | None = None,
    ) -> Answer:
        return await self.jobs.submit(self, endpoint, canonical, request, record, rate_headers, queued)


class Jobs:
    """Submit, read, follow and cancel jobs, and run them with ``jobs.consumers`` consumers per process."""

    def __init__(self, gateway: Gateway, queue: JobQueue) -> None:
        self.gateway = gateway
        self.queue = queue
        self.settings = gateway.config.jobs
        self._consumers: list[asyncio.Task[None]] = []
        self._running: set[asyncio.Task[None]] = set()
        self._notifying: set[asyncio.Task[None]] = set()
        self._handles: dict[asyncio.Task[None], Taken] = {}  # the queue entry of each job running here
        self._started: dict[str, JobRecord] = {}  # jobs this process marked running and has not ended
        self._stopping = False
        self.entered: Counter[str] = Counter()  # jobs entering each status in this process, for the console

    # --- lifecycle

    def start(self) -> None:
        self._consumers = [
            asyncio.create_task(self._consume(number), name=f"job-consumer-{number}")
            for number in range(self.settings.consumers)
        ]

    def stop_taking(self) -> None:
        """Take no more jobs (the process is stopping): the consumers end now; the running jobs go on."""
        if self._stopping:
            return
        self._stopping = True
        for task in self._consumers:
            task.cancel()
        log.info("jobs_stop_taking", running=len(self._running))

    async def aclose(self, grace_s: float = 0.0) -> None:
        """Stop taking jobs; let the running ones finish within ``grace_s``, then hand the rest back.

        A job still running past the grace is cancelled and handed back: its record is ``queued``
        again (this run not counted against ``jobs.max_runs``) and its queue entry is marked idle
        at once, so another replica's next look for abandoned entries (``XAUTOCLAIM``, every
        ``claim_after_s``/4 at most) takes it. Entries this process read but never started, and
        jobs whose webhook was not delivered yet, are handed back the same way. When Redis does
        not answer in time, the entries stay pending and are claimed ``claim_after_s`` after their
        last keep-alive instead. Every step is bounded: this returns within about
        ``grace_s + STOP_S + HAND_BACK_S + STOP_S`` whatever Redis does.
        """
        self.stop_taking()
        running = set(self._running)
        if running and grace_s > 0:
            await asyncio.wait(running, timeout=grace_s)
        unfinished = {task for task in running if not task.done()} | set(self._notifying)
        for task in unfinished:  # webhooks not delivered yet: another replica delivers them
            task.cancel()
        ending = {*self._consumers, *unfinished}
        if ending:
            await asyncio.wait(ending, timeout=STOP_S)
        stuck = [self._handles[task] for task in unfinished if not task.done() and task in self._handles]
        await bounded(self._hand_back(stuck), HAND_BACK_S, "jobs_hand_back")
        await bounded(self.queue.aclose(), STOP_S, "job_queue_close")

    async def _hand_back(self, stuck: list[Taken]) -> None:
        """The jobs cancelled mid-run are queued again; this process's pending entries go to another.

        A run that did not end when cancelled (``stuck``) keeps its entry: it is taken over only
        ``claim_after_s`` after its last renewal, by when this process is gone."""
        stuck_jobs = {taken.job_id for taken in stuck}
        for job in list(self._started.values()):
            if job.id in stuck_jobs:
                continue
            job.status, job.runs, job.updated_at = QUEUED, max(0, job.runs - 1), int(time.time())
            if await self.queue.replace(job, frozenset({RUNNING})):
                self._transition(job, "handed back: the process stopped before it ended")
        handed = await self.queue.hand_back(self.settings.consumers, {taken.handle for taken in stuck})
        if handed:
            log.warning("jobs_handed_back", entries=handed, detail="another replica takes them")

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
        return Ticket(self, key, preferences, webhook)

    async def submit(
        self,
        ticket: Ticket,
        endpoint: Endpoint[Any, Any],
        canonical: ImageRequest,
        request: ScopeInbound,
        record: RequestRecord,
        rate_headers: dict[str, str],
        queued: Callable[[JobRecord], Awaitable[None]] | None = None,
    ) -> Answer:
        """Store and queue a job; ``202`` with its place, or the plain answer when it ends within ``wait``.

        ``queued`` hears of the job as soon as it is queued (an Idempotency-Key keeps it: gateway/idempotency.py).
        """
        async with store_errors():
            key, preferences, webhook = ticket.key, ticket.preferences, ticket.webhook
            if canonical.stream:  # a job's result is the JSON answer; events are at /v1/jobs/{id}/events
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
                key=key.name if key is not None else None,
                route=_route_of(endpoint),
                status=QUEUED,
                created_at=now,
                updated_at=now,
                request_id=current_request_id(),
                base_url=self.gateway.public_base_url or request.base_url(),
            )
            job.webhook = webhook
            job.reservation = record.reservation  # of the key's budget: the job settles it when it ends
            await self._put(job, msgspec.msgpack.encode(canonical, enc_hook=encode_hook))
            record.reservation = None
            self._transition(job, "submitted")
            if queued is not None:
                await queued(job)
            if preferences.wait:  # a client that hangs up while it waits leaves the job running
                waited = self.wait(job.id, min(preferences.wait, self.settings.max_wait_s))
                done = await unless_client_leaves(request.receive, waited)
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
            if time.monotonic() - quiet_since >= 15:
                yield b": keep-alive\n\n"  # proxies keep a quiet stream open
                quiet_since = time.monotonic()
            await asyncio.sleep(POLL_S)
            found = await self.queue.get(job.id)
            if found is None:  # expired while followed
                return
            job, progress = found

    # --- run

    async def _consume(self, number: int) -> None:
        while not self._stopping:
            try:
                taken = await self.queue.take(number)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: try again, never stop consuming
                resume_cancel()  # a stop that redis-py reported as its timeout is still a stop
                log.warning("job_queue_unavailable", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(1.0)
                continue
            if self._stopping:  # taken as the process began to stop: handed back (aclose)
                return
            task = asyncio.create_task(self._run(taken, number))
            self._running.add(task)
            self._handles[task] = taken
            task.add_done_callback(self._forget)
            await asyncio.shield(task)  # one job at a time per consumer; shutdown waits for it (aclose)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._handles.pop(task, None)

    async def _run(self, taken: Taken, consumer: int) -> None:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(job_id=taken.job_id)
        try:
            await self._run_taken(taken, consumer)
        except asyncio.CancelledError:
            raise  # the process is stopping: a job it started is handed back (aclose)
        except Exception as exc:  # a store that failed mid-way: the entry stays, and is claimed again later
            log.error("job_run_failed", error=f"{type(exc).__name__}: {exc}")
        self._started.pop(taken.job_id, None)

    async def _run_taken(self, taken: Taken, consumer: int) -> None:
        found = await self.queue.get(taken.job_id)
        if found is None:  # expired
            await self.queue.done(taken)
            return
        job = found[0]
        structlog.contextvars.bind_contextvars(request_id=job.request_id)
        if job.status in TERMINAL:  # cancelled while queued, or ended by a process that stopped before its webhook
            await self._release(taken, consumer)
            return
        if taken.claimed:
            dialect = _MOUNTS[job.route].endpoint.dialect if job.route in _MOUNTS else "unknown"
            metrics.child(metrics.JOB_CLAIMS, dialect).inc()
            log.warning("job_claimed", detail="taken over from a process that stopped", runs=job.runs)
        if job.runs >= self.settings.max_runs:
            error = GatewayError(ErrorCode.INTERNAL, f"the job was interrupted {job.runs} times", public=True)
            await self._end(job, FAILED, error=error)
            await self._release(taken, consumer)
            return
        if job.runs == 0:
            metrics.JOB_QUEUE_AGE.observe(max(0.0, time.time() - job.created_at))
        job.status, job.runs, job.updated_at = RUNNING, job.runs + 1, int(time.time())
        if not await self.queue.replace(job, frozenset({QUEUED, RUNNING})) or await self.queue.cancel_requested(job.id):
            await self._release(taken, consumer)  # cancelled meanwhile
            return
        self._started[job.id] = msgspec.structs.replace(job)  # as stored now: what a hand-back starts from
        self._transition(job, "started")
        payload = await self.queue.payload(job.id)
        if payload is None:
            error = GatewayError(ErrorCode.INTERNAL, "the job's request was lost", public=True)
            await self._end(job, FAILED, error=error)
            await self._release(taken, consumer)
            return
        canonical = msgspec.msgpack.decode(payload, type=ImageRequest, dec_hook=decode_hook)
        mount = _MOUNTS[job.route]
        progress = _ProgressWriter(self.queue, job.id)
        work = asyncio.create_task(self._generate(job, mount, canonical, progress))
        watcher = asyncio.create_task(self._watch(taken, consumer, work))
        metrics.JOBS_RUNNING.inc()
        try:
            body, headers, cost = await work
        except asyncio.CancelledError:
            if not watcher.done():  # this process is stopping: the entry stays for another to claim
                raise
            await self._end(job, CANCELED)
        except Exception as exc:
            await self._end(job, FAILED, error=exc, mount=mount)
        else:
            await self._end(job, SUCCEEDED, result=body, headers=headers, cost=cost)
        finally:
            metrics.JOBS_RUNNING.dec()
            watcher.cancel()
            await progress.aclose()
        await self._release(taken, consumer)

    async def _release(self, taken: Taken, consumer: int) -> None:
        """The job has ended: tell its webhook, then let its queue entry go.

        The entry is acknowledged only once the deliveries are recorded, so a process that stops
        mid-way leaves it to another, which delivers again (at least once). The deliveries run
        beside the consumer, which takes the next job meanwhile.
        """
        found = await self.queue.get(taken.job_id)
        job = found[0] if found is not None else None
        if job is None or job.webhook is None or job.notified or job.status not in TERMINAL:
            await self.queue.done(taken)
            return
        task = asyncio.create_task(self._notify(job, taken, consumer))
        self._notifying.add(task)
        task.add_done_callback(self._notifying.discard)

    async def _notify(self, job: JobRecord, taken: Taken, consumer: int) -> None:
        structlog.contextvars.bind_contextvars(job_id=job.id, request_id=job.request_id)
        webhooks = self.gateway.webhooks
        assert job.webhook is not None
        keeper = asyncio.create_task(self._keep(taken, consumer))
        try:
            found = await self.queue.get(job.id)
            body = msgspec.json.decode(msgspec.json.encode(job_body(job, found[1] if found else None)))
            body.pop("webhooks", None)  # the deliveries are not known yet
            deliveries = await webhooks.deliver(job.webhook, f"msg_{job.id}", f"job.{job.status}", body)
        finally:
            keeper.cancel()
        job.webhooks, job.notified = deliveries, True
        try:
            await self.queue.replace(job, frozenset({job.status}))
            await self.queue.done(taken)
        except Exception as exc:  # the entry stays: another process delivers again
            log.error("job_webhook_not_recorded", error=f"{type(exc).__name__}: {exc}")

    async def _keep(self, taken: Taken, consumer: int) -> None:
        while True:
            await asyncio.sleep(self.settings.claim_after_s / 3)
            try:
                await self.queue.keep(taken, consumer)
            except Exception as exc:  # Redis away for a moment
                log.warning("job_keepalive_failed", error=type(exc).__name__)

    async def _generate(
        self, job: JobRecord, mount: Mount, canonical: ImageRequest, progress: _ProgressWriter
    ) -> tuple[bytes, dict[str, str], int]:
        """route ▸ deliver ▸ encode, as ``serve`` would, for the job's request; its images and cost counted."""
        deadline = time.monotonic() + self.gateway.config.server.request_deadline_s
        record = RequestRecord(mount.endpoint.dialect, mount.endpoint.operation.value, key=job.key or "none")
        plan = self.gateway.router.plan(canonical.model)
        record.model = plan.model.name
        # As serve does: shared with identical seeded requests, or from the cache (gateway.dedup).
        dedup = self.gateway.dedup
        result, cache = await dedup.generate(job.key, canonical, plan, deadline, record.attempts, None, progress)
        body = await finish(self.gateway, mount.endpoint, canonical, result, job.base_url, record, plan, cache)
        record.count_images()  # as a plain call's are counted when it ends (the submit counted none)
        return bytes(body), answer_headers(result, record, cache), record.cost.micros if record.cost is not None else 0

    async def _watch(self, taken: Taken, consumer: int, work: asyncio.Task[Any]) -> None:
        """While the job runs: keep its queue entry (no other process claims it), and stop it when cancelled."""
        keep_every = self.settings.claim_after_s / 3
        kept = time.monotonic()
        while not work.done():
            await asyncio.sleep(min(POLL_S, keep_every))
            try:
                if time.monotonic() - kept >= keep_every:
                    await self.queue.keep(taken, consumer)
                    kept = time.monotonic()
                if await self.queue.cancel_requested(taken.job_id):
                    work.cancel()
                    return
            except Exception as exc:  # Redis away for a moment: the job goes on
                log.warning("job_keepalive_failed", error=type(exc).__name__)

    async def _end(
        self,
        job: JobRecord,
        status: str,
        *,
        result: bytes | None = None,
        headers: dict[str, str] | None = None,
        error: BaseException | None = None,
        mount: Mount | None = None,
        cost: int = 0,
    ) -> None:
        """Store the job's end (unless it was cancelled meanwhile), and settle its reservation: what it cost."""
        job.status, job.updated_at = status, int(time.time())
        if result is not None:
            job.result = result.decode()
            job.headers = headers or {}
        if error is not None:
            mount = mount or _MOUNTS[job.route]
            failure = self._failure(error, mount)
            status_code, error_headers, body = error_answer(failure, mount.errors)
            job.error = body.decode()
            job.failure = JobError(
                code=failure.code.value,
                message=failure.message,
                status=status_code,
                param=failure.param,
                headers=error_headers,
            )
        if await self.queue.replace(job, frozenset({QUEUED, RUNNING})):
            self._transition(job, "ended")
            await self._settle(job, cost if status == SUCCEEDED else 0)

    async def _settle(self, job: JobRecord, actual: int) -> None:
        """The reservation of the key's budget becomes ``actual`` micros (0: all given back), once: by whoever
        moved the job to its end (its run, or a DELETE)."""
        if job.reservation is None:
            return
        try:
            await self.gateway.admission.settle(job.reservation, actual)
        except Exception as exc:  # the reservation expires with its period; the job's end stands
            log.error("job_budget_not_settled", error=f"{type(exc).__name__}: {exc}")

    def _failure(self, error: BaseException, mount: Mount) -> GatewayError:
        from gateway.errors import to_gateway_error  # gateway.errors imports the routes this module does

        failure = to_gateway_error(error if isinstance(error, Exception) else Exception(), 0)
        return mount.endpoint.client_error(failure)

    async def summary(self) -> dict[str, Any]:
        """For the console: the queue (every replica's, with Redis) and this process's jobs by status."""
        return {
            "available": True,
            "store": "redis" if self.gateway.config.redis.url else "memory",
            "waiting": await self.queue.waiting(),
            "running_here": len(self._running),
            "by_status_here": dict(self.entered),
        }

    def _transition(self, job: JobRecord, detail: str) -> None:
        self.entered[job.status] += 1
        metrics.child(metrics.JOBS, job.status).inc()
        log.info("job", job_id=job.id, request_id=job.request_id, status=job.status, detail=detail, key_name=job.key)


def _event(number: int, kind: str, data: dict[str, Any]) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (number, kind.encode(), msgspec.json.encode(data))
