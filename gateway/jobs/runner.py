"""Running jobs: this process's consumers take jobs from the queue and run the request's tail on each.

``JobRunner`` is the part of ``gateway.jobs.service.Jobs`` that runs: start, stop taking, hand
back at shutdown, and for each job taken: the tail every request runs (``gateway.request.steps.produce``:
route through dedup ▸ deliver ▸ encode ▸ price ▸ energy), the job's end (its record, its budget
settled), and its webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from typing import Any

import msgspec
import structlog

from gateway.jobs.queue import (
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
    Taken,
    job_body,
)
from gateway.observability import metrics
from gateway.redis_health import resume_cancel
from gateway.request.mounts import MOUNTS, Mount, mount_at
from gateway.request.steps import Planned, produce, record_of
from gateway.routing.attempts import Attempts
from gateway.shutdown import bounded
from gateway.state import Gateway
from schemas.canonical import ErrorCode, GatewayError, ImageRequest, Progress, decode_hook
from schemas.dialect import error_answer

__all__ = ["JobRunner"]

log = structlog.get_logger("gateway.jobs")
_FALLBACK_MOUNT = MOUNTS[-1]  # a job whose route is no longer served fails in the OpenAI envelope (the root /v1)
STOP_S = 1.0  # at shutdown: how long cancelled jobs get to unwind, and the queue to close
HAND_BACK_S = 2.0  # at shutdown: how long handing the unfinished jobs back to the queue may take
POLL_S = 0.25  # how often a waiting answer, an event stream and a running job's cancel check look again


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


class JobRunner:
    """Runs jobs with ``jobs.consumers`` consumers per process."""

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
            claimed_mount = mount_at(job.route)
            dialect = claimed_mount.endpoint.dialect if claimed_mount is not None else "unknown"
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
        mount = mount_at(job.route)
        if mount is None:  # a route this version no longer serves
            error = GatewayError(ErrorCode.INTERNAL, "the job's route is no longer served", public=True)
            await self._end(job, FAILED, error=error)
            await self._release(taken, consumer)
            return
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
        """The tail every request runs, for the job's request: its body, headers and cost; its images counted."""
        gateway = self.gateway
        deadline = time.monotonic() + gateway.config.server.request_deadline_s
        plan = gateway.router.plan(canonical.model)
        base_url = gateway.public_base_url or job.base_url
        planned = Planned(mount.endpoint, canonical, plan, job.key, deadline, base_url)
        attempts = Attempts()
        completed = await produce(gateway, planned, attempts, progress=progress)
        model, provider = plan.model.name, completed.result.provider
        record = record_of(
            mount.endpoint, attempts, "ok", model=model, key_name=job.key, provider=provider, completed=completed
        )
        record.count_images()  # as a plain call's are counted when it ends (the submit counted none)
        return bytes(completed.body), completed.headers(), completed.micros

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
            mount = mount or mount_at(job.route) or _FALLBACK_MOUNT
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
        from gateway.request.errors import to_gateway_error  # gateway.errors imports the routes this module does

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
