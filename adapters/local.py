"""The ``local`` provider: diffusers pipelines in this process, or on remote worker servers.

With ``workers`` empty the adapter runs a ``local_backend.engine.LocalEngine`` itself
(torch is imported then, and only then). Otherwise each worker is an HTTP provider like
any other (``HttpAdapter`` with the worker's endpoint and error table, ``schemas.worker``),
and the request goes to the workers in turn, moving on to the next one when a worker
cannot be reached, is overloaded or refuses the gateway's credential, so GPU nodes scale
apart from gateway replicas. Every call to a worker, its ``/health`` too, carries the
provider's ``worker_token`` as ``Authorization: Bearer`` (local_backend/server.py).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from adapters.base import AdapterBase, BackendObserver, CallOptions, TimeoutSettings
from adapters.http import HttpAdapter, UpstreamUnreachable
from adapters.upstream import AnswerTooLarge, UpstreamClient, UpstreamFailure
from schemas import worker as protocol
from schemas.canonical import ErrorCode, FailureReason, GatewayError, ImageRequest, ImageResult, Operation
from schemas.dialect import Endpoint
from schemas.local import LocalBackendSettings

if TYPE_CHECKING:
    from local_backend.engine import LocalEngine

__all__ = ["LocalAdapter", "WorkerAdapter"]

log = structlog.get_logger("adapters.local")

# The most a worker's answer may hold: n images of the largest size, as base64 JSON, fit well within.
MAX_WORKER_ANSWER_BYTES = 1 << 30
# A worker's failures that another worker may not have: try the next one.
_NEXT_WORKER = frozenset({ErrorCode.OVERLOADED})


class _WorkerHealth(msgspec.Struct):
    """What the gateway reads of a worker's ``/health``: ``ok``, ``degraded`` or ``unavailable``."""

    status: str = ""


_health_decoder = msgspec.json.Decoder(_WorkerHealth)


class SpeedOptions(msgspec.Struct, kw_only=True):
    """A loaded model's speed options as its engine reports them (``local_backend.pipelines.SpeedOptions``)."""

    dtype: str
    quantize: str | None = None  # the denoiser's linear layers in float8 (torchao): ``fp8``, ``fp8_weight_only``
    cache: str | None = None  # a step cache, its kind and fields, e.g. ``first_block:0.05``
    compile: str | None = None  # compilation's mode (``whole:default``: the whole denoiser)
    fuse_qkv: bool = False
    channels_last: bool = False


class _WorkerStats(msgspec.Struct):
    """What the console reads of a worker's ``/stats``: each loaded model's speed options."""

    options: dict[str, SpeedOptions] = {}


_stats_decoder = msgspec.json.Decoder(_WorkerStats)
# A worker's speed options change only when it restarts: its /stats is asked at most this often for the console.
WORKER_OPTIONS_TTL_S = 30.0


@dataclass
class WorkerSettings:
    """One remote worker, as the HTTP adapter reads a provider's settings."""

    base_url: str
    timeout: TimeoutSettings
    api_key: str = ""
    image_hosts: list[str] = field(default_factory=list)
    max_image_bytes: int = MAX_WORKER_ANSWER_BYTES
    max_response_bytes: int = MAX_WORKER_ANSWER_BYTES
    max_concurrency: int = 1024  # the worker's own bounded queue refuses what it cannot hold


class WorkerAdapter(HttpAdapter):
    """One remote worker server: every operation on ``POST /v1/generate``, failures read by its error table."""

    errors = protocol.ERRORS

    def endpoints_for(self, config: object) -> dict[Operation, Endpoint[Any, Any]]:
        return dict.fromkeys(Operation, protocol.GENERATE)


class LocalAdapter(AdapterBase):
    """The adapter of a ``kind: local`` provider."""

    def __init__(self, name: str, settings: LocalBackendSettings, client: UpstreamClient) -> None:
        self.name = name
        self.settings = settings
        self.client = client
        self.engine: LocalEngine | None = None
        self.observer: BackendObserver | None = None  # set by observe(), before start()
        self._turn = itertools.count()
        self._starting = asyncio.Lock()
        self._workers = [
            WorkerAdapter(
                name, WorkerSettings(base_url=url, timeout=settings.timeout, api_key=settings.worker_token), client
            )
            for url in settings.workers
        ]
        self._health_headers = {"Authorization": f"Bearer {settings.worker_token}"} if settings.worker_token else None
        self._worker_options: dict[str, SpeedOptions] = {}
        self._worker_options_at = -WORKER_OPTIONS_TTL_S

    @property
    def remote(self) -> bool:
        return bool(self.settings.workers)

    def observe(self, observer: BackendObserver) -> None:
        """The in-process engine reports queue depth and batches to ``observer`` (metrics)."""
        self.observer = observer

    async def start(self) -> None:
        """Load the models in-process (nothing to do when the models live on workers)."""
        async with self._starting:
            if self.remote and not self.settings.worker_token:
                log.warning(
                    "worker_token_unset",
                    provider=self.name,
                    detail="calls to this provider's workers carry no credential: a worker that wants one refuses them",
                )
            if self.remote or self.engine is not None:
                return
            from local_backend.engine import LocalEngine  # brings torch: only where models run here

            engine = LocalEngine(self.settings, name=self.name, observer=self.observer)
            await engine.start()
            self.engine = engine

    async def aclose(self) -> None:
        if self.engine is not None:
            await self.engine.aclose()
            self.engine = None

    async def generate(self, request: ImageRequest, options: CallOptions) -> ImageResult:
        started = time.perf_counter()
        timeout = options.timeout or self.settings.timeout.read
        if self.remote:
            result = await self._remote(request, msgspec.structs.replace(options, timeout=timeout))
        else:
            result = await self._in_process(request, timeout, options)
        result.provider = self.name
        result.timings.total = time.perf_counter() - started
        return result

    async def ready(self) -> dict[str, Any] | None:
        """Whether this provider can serve: its models loaded, or at least one worker serving (healthy or degraded)."""
        if not self.remote:
            if self.engine is None:
                return {"ready": False, "models": {}}
            return {"ready": self.engine.ready, "models": self.engine.stats().models}
        answers = await asyncio.gather(*(self._health(url) for url in self.settings.workers))
        return {"ready": any(answers), "workers": dict(zip(self.settings.workers, answers, strict=True))}

    async def backend_status(self) -> dict[str, Any] | None:
        """For the console: the in-process engine's counters and each model's speed options; with remote workers,
        each worker's health and the speed options they report (``/stats``)."""
        if self.remote:
            state = await self.ready() or {}
            options = await self._remote_options()
            return {"remote": True, "workers": state.get("workers", {}), "options": msgspec.to_builtins(options)}
        if self.engine is None:
            return {"remote": False, "device": None, "started": False}
        stats = msgspec.to_builtins(self.engine.stats())
        stats["batch_sizes"] = {str(size): count for size, count in stats["batch_sizes"].items()}
        # Every field, as remote workers' are told: the engine's own form leaves the defaults out.
        stats["options"] = msgspec.to_builtins(msgspec.convert(stats["options"], dict[str, SpeedOptions]))
        return {"remote": False, "started": True, **stats}

    async def _remote_options(self) -> dict[str, SpeedOptions]:
        """Each model's speed options as the workers report them (the first to name a model), asked every
        ``WORKER_OPTIONS_TTL_S`` at most; what was known before while no worker answers."""
        if time.monotonic() - self._worker_options_at < WORKER_OPTIONS_TTL_S:
            return self._worker_options
        self._worker_options_at = time.monotonic()
        found: dict[str, SpeedOptions] = {}
        for answer in await asyncio.gather(*(self._stats(url) for url in self.settings.workers)):
            for model, options in (answer or {}).items():
                found.setdefault(model, options)
        if found:
            self._worker_options = found
        return self._worker_options

    async def _stats(self, url: str) -> dict[str, SpeedOptions] | None:
        connect = self.settings.timeout.connect
        try:
            answer = await self.client.send(
                "GET",
                url + protocol.STATS_PATH,
                headers=self._health_headers,
                connect_timeout=connect,
                read_timeout=connect,
                max_bytes=1 << 20,
            )
            return _stats_decoder.decode(answer.body).options if answer.status == 200 else None
        except (UpstreamFailure, AnswerTooLarge, msgspec.ValidationError, msgspec.DecodeError):
            return None

    # --- in-process ---

    async def _in_process(self, request: ImageRequest, timeout: float, options: CallOptions) -> ImageResult:
        if self.engine is None:
            await self.start()
        assert self.engine is not None
        try:
            async with asyncio.timeout(timeout):  # leaving the wait drops the request if it is still queued
                return await self.engine.generate(request, options.progress)
        except TimeoutError as exc:
            raise GatewayError(
                ErrorCode.UPSTREAM_TIMEOUT, f"local model did not answer within {timeout:g} s", provider=self.name
            ) from exc
        except GatewayError as error:
            error.provider = self.name
            error.public = _speaks_to_the_client(error)
            raise

    # --- remote workers ---

    async def _remote(self, request: ImageRequest, options: CallOptions) -> ImageResult:
        """Each worker at most once, starting with the next in turn; the last failure when all fail."""
        first = next(self._turn) % len(self._workers)
        failure: GatewayError | None = None
        for offset in range(len(self._workers)):
            worker = self._workers[(first + offset) % len(self._workers)]
            try:
                return await worker.generate(request, options)
            except GatewayError as error:
                error.provider = self.name
                error.public = _speaks_to_the_client(error)
                # A worker refusing the credential drew nothing: another (not yet rotated) may take it.
                refused = error.reason is FailureReason.UPSTREAM_CREDENTIALS
                if error.code not in _NEXT_WORKER and not refused and not isinstance(error, UpstreamUnreachable):
                    raise
                if refused:  # seen here even when the next worker serves: that worker wants another token
                    log.warning("worker_refused_token", provider=self.name, worker=worker.config.base_url)
                failure = error
        assert failure is not None
        raise failure

    async def _health(self, url: str) -> bool:
        connect = self.settings.timeout.connect
        try:
            answer = await self.client.send(
                "GET",
                url + protocol.HEALTH_PATH,
                headers=self._health_headers,
                connect_timeout=connect,
                read_timeout=connect,
                max_bytes=1 << 20,
            )
        except (UpstreamFailure, AnswerTooLarge):
            return False
        if answer.status == 200:
            return True
        # A degraded worker (503: a model's weights missing) still serves its other models: it counts as up here,
        # so one missing model on every worker does not take this provider, and the gateway's readiness, away.
        try:
            return _health_decoder.decode(answer.body).status == "degraded"
        except (msgspec.ValidationError, msgspec.DecodeError):
            return False


def _speaks_to_the_client(error: GatewayError) -> bool:
    """The engine is the gateway's own: its refusals of the client's input are told as it words them.

    Its failures (a model that did not load, a drawing that raised) name exceptions: the
    router logs those and tells the client its own sentence.
    """
    return not error.retryable and error.code is not ErrorCode.INTERNAL
