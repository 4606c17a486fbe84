"""The job routes: ``GET /v1/jobs/{id}``, ``GET /v1/jobs/{id}/events`` (server-sent events), ``DELETE /v1/jobs/{id}``.

Litestar routes (they read no dialect's body); every failure is answered in the OpenAI
envelope (``gateway.errors.handle_exception``: ``/v1/jobs`` belongs to no other dialect).
A job is visible only to the inbound key that submitted it: any other key gets the 404 of a
job that is not there.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, delete, get
from litestar.di import Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath
from litestar.response import Stream

from gateway.jobs.queue import job_body
from gateway.jobs.service import JOBS_PATH, Jobs
from gateway.request import sse
from gateway.state import Gateway, Injected
from schemas.canonical import ErrorCode, GatewayError
from schemas.nebul import NebulError

__all__ = ["JOB_ROUTES"]


class JobProgressBody(msgspec.Struct):
    step: int
    steps: int


class JobBody(msgspec.Struct, omit_defaults=True):
    """A job: ``result`` is the body the plain call would have answered in the submitting dialect,
    ``error`` that dialect's error body; ``progress`` while the backend reports steps."""

    id: str
    status: str  # queued | running | succeeded | failed | canceled
    created_at: int
    updated_at: int
    progress: JobProgressBody | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    webhooks: list[dict[str, Any]] | None = None


_ERRORS = {
    401: ResponseSpec(data_container=NebulError, description="No inbound API key, or one the gateway does not know"),
    404: ResponseSpec(
        data_container=NebulError, description="No such job, it has expired, or another key submitted it"
    ),
}


def provide_jobs(gateway: Injected[Gateway]) -> Jobs:
    """The ``jobs`` dependency (from the app's ``gateway`` one): the process's jobs, a 500 until they run."""
    if not isinstance(gateway.jobs, Jobs):
        raise GatewayError(ErrorCode.INTERNAL, "jobs are not running")
    return gateway.jobs


_DEPENDENCIES = {"jobs": Provide(provide_jobs, sync_to_thread=False)}


def _json(body: dict[str, Any], status: int = 200) -> Response[bytes]:
    return Response(msgspec.json.encode(body), status_code=status, media_type="application/json")


@get(
    f"{JOBS_PATH}/{{job_id:str}}",
    tags=["jobs"],
    responses=_ERRORS,
    response_description="The job",
    dependencies=_DEPENDENCIES,
)
async def get_job(
    request: Request[Any, Any, Any],
    job_id: FromPath[str],
    jobs: Injected[Jobs],
    gateway: Injected[Gateway],
) -> Response[JobBody]:
    """A job submitted with ``Prefer: respond-async``: its status, progress, and result or error."""
    key = gateway.admission.authorize(request.headers)
    job, progress = await jobs.find(job_id, key)
    return _json(job_body(job, progress))  # type: ignore[return-value]


@get(
    f"{JOBS_PATH}/{{job_id:str}}/events",
    tags=["jobs"],
    responses=_ERRORS,
    media_type=sse.EVENT_STREAM,
    response_description=(
        "Server-sent events: `status` ({id, status, updated_at}) and `progress` ({step, steps}) as they change, "
        "then one `result` event with the job's whole body, after which the stream ends"
    ),
    dependencies=_DEPENDENCIES,
)
async def job_events(
    request: Request[Any, Any, Any],
    job_id: FromPath[str],
    jobs: Injected[Jobs],
    gateway: Injected[Gateway],
) -> Stream:
    """Follow a job as server-sent events until it ends."""
    key = gateway.admission.authorize(request.headers)
    job, progress = await jobs.find(job_id, key)  # a 404 before the stream starts
    return Stream(jobs.events(job, progress), media_type=sse.EVENT_STREAM, headers=dict(sse.HEADERS))


@delete(
    f"{JOBS_PATH}/{{job_id:str}}",
    tags=["jobs"],
    status_code=200,
    responses={
        **_ERRORS,
        409: ResponseSpec(data_container=NebulError, description="The job has already ended"),
    },
    response_description="The job, canceled",
    dependencies=_DEPENDENCIES,
)
async def cancel_job(
    request: Request[Any, Any, Any],
    job_id: FromPath[str],
    jobs: Injected[Jobs],
    gateway: Injected[Gateway],
) -> Response[JobBody]:
    """Cancel a job: a queued one never runs, a running one has its generation cancelled."""
    key = gateway.admission.authorize(request.headers)
    return _json(await jobs.cancel(job_id, key))  # type: ignore[return-value]


JOB_ROUTES = [get_job, job_events, cancel_job]
