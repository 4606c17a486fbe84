"""The local engine: the configured pipelines on one device, behind a bounded, batching queue.

One thread owns the device and every pipeline on it (a pipeline is not safe to call
from two threads at once), so inference never runs on the event loop and never runs
twice at once. Requests are checked against their model's rules before they queue; a
full queue is ``overloaded`` at once; a request whose caller stops waiting before its
batch starts is taken out and never drawn. Images are encoded off the device thread,
so the next batch starts while the last one is still being turned into PNG.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol, TypeVar

import msgspec
import structlog
import torch
from opentelemetry import context as otel_context
from PIL import Image

from local_backend.batching import BatchQueue, Job
from local_backend.energy import Meter, measured, pick_meter, share
from local_backend.images import encode_images
from local_backend.pipelines import Drawn, LoadedModel, SpeedOptions, load_model, pick_device, pick_dtype
from local_backend.previews import Reporter
from local_backend.rules import Work, resolve
from schemas.canonical import (
    Energy,
    ErrorCode,
    FailureReason,
    GatewayError,
    GeneratedImage,
    ImageRequest,
    ImageResult,
    Progress,
    Timings,
    Usage,
)
from schemas.local import LocalBackendSettings, LocalModelSettings
from schemas.tracing import TRACER_CONTEXT_KEY

__all__ = ["EngineObserver", "EngineStats", "LocalEngine"]

log = structlog.get_logger("local_backend.engine")
T = TypeVar("T")

READY = "ready"


class EngineObserver(Protocol):
    """Where the engine reports as it goes (the gateway's Prometheus metrics); called on the event loop."""

    def queue_depth(self, model: str, depth: int) -> None:
        """Requests for ``model`` now waiting."""

    def batch_drawn(self, model: str, images: int, seconds: float) -> None:
        """One pipeline call of ``model`` drew ``images`` images in ``seconds``."""


class EngineStats(msgspec.Struct, kw_only=True):
    """Counters for tests, metrics and the worker's ``/stats``."""

    device: str
    # Requests waiting for the device, and images in the pipeline call under way.
    queue_depth: int
    running: int
    batches: int
    # Images per pipeline call → how many calls drew that many.
    batch_sizes: dict[int, int]
    images_generated: int
    requests_refused: int
    requests_dropped: int
    # Batches that started at once (a lone request at an idle device) and that held the window for companions.
    batches_at_once: int = 0
    batches_held: int = 0
    # Each configured model: "ready", or why it is not.
    models: dict[str, str]
    # Each loaded model's speed options (dtype, step cache, compilation, fused QKV, channels-last).
    options: dict[str, SpeedOptions] = {}


class LocalEngine:
    """The configured models on this machine's device; ``generate`` answers one canonical request."""

    def __init__(
        self, settings: LocalBackendSettings, name: str = "local", observer: EngineObserver | None = None
    ) -> None:
        self.settings = settings
        self.name = name
        self.observer = observer
        self.device = "unstarted"
        self._models: dict[str, LoadedModel] = {}
        self._failed: dict[str, GatewayError] = {}
        self._queue: BatchQueue | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._serving: asyncio.Task[None] | None = None
        self._in_flight: asyncio.Future[None] | None = None
        self._closing = False
        self._deliveries: set[asyncio.Task[None]] = set()
        self._reporters: dict[int, Reporter] = {}  # id(job) → the progress reporter of a request that wants one
        self._running = 0
        self._batch_sizes: Counter[int] = Counter()
        self._images = self._refused = self._dropped = 0
        self._meter: Meter | None = None

    # --- life cycle ---

    async def start(self) -> None:
        """Pick the device, load every model on its thread, and start taking requests.

        A model that cannot be loaded (its weights missing, most often: an operator's error)
        is logged with the reason, which ``stats()`` keeps; its requests are answered
        ``overloaded`` with reason ``model_unavailable`` (503, no server path in the message),
        so a route falls back to its next target; the other models serve.
        """
        self.device = pick_device(self.settings.device)
        self._meter = pick_meter(self.settings.energy, self.device)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"local-backend-{self.device}")
        self._queue = BatchQueue(
            self.settings.queue_size, self.settings.max_batch_size, self.settings.batch_window_ms / 1000
        )
        loop = asyncio.get_running_loop()
        for name, model_settings in self.settings.models.items():
            dtype = pick_dtype(self.device, model_settings.dtype or self.settings.dtype)
            try:
                self._models[name] = await loop.run_in_executor(self._executor, self._load, name, model_settings, dtype)
            except GatewayError as error:
                log.error("local_model_unavailable", model=name, reason=error.message)
                self._failed[name] = error
            except Exception as exc:
                log.exception("local_model_failed", model=name)
                self._failed[name] = GatewayError(
                    ErrorCode.UPSTREAM_ERROR, f"local model {name!r} failed to load: {type(exc).__name__}: {exc}"
                )
        self._serving = asyncio.create_task(self._serve(), name=f"local-backend-{self.name}")
        log.info(
            "local_engine_started",
            device=self.device,
            models={name: model.options.label() for name, model in sorted(self._models.items())},
        )

    def _load(self, name: str, settings: LocalModelSettings, dtype: torch.dtype) -> LoadedModel:
        """Load, apply the speed options, and warm up (compiling, when ``compile`` is set) before serving."""
        model = load_model(name, settings, self.device, dtype, where=f"$.providers.{self.name}.models.{name}")
        model.warm_up()
        return model

    async def aclose(self) -> None:
        """Stop serving: the batch on the device finishes and is answered; waiting requests get ``overloaded``."""
        self._closing = True
        if self._serving is not None:
            self._serving.cancel()
            await asyncio.gather(self._serving, return_exceptions=True)
        if self._in_flight is not None:
            await asyncio.gather(self._in_flight, return_exceptions=True)
        if self._queue is not None:
            while self._queue:
                _fail(
                    self._queue.pop_oldest(), GatewayError(ErrorCode.OVERLOADED, "the local backend is shutting down")
                )
        await asyncio.gather(*self._deliveries, return_exceptions=True)
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown, True, cancel_futures=True)
        self._models.clear()

    async def run_on_device(self, work: Callable[..., T], *args: Any) -> T:
        """Run ``work(*args)`` on the device thread, between batches (benchmarks: a bare pipeline loop)."""
        assert self._executor is not None, "the engine has not been started"
        return await asyncio.get_running_loop().run_in_executor(self._executor, work, *args)

    @property
    def models(self) -> Mapping[str, LoadedModel]:
        """The models that loaded, by name."""
        return MappingProxyType(self._models)

    @property
    def ready(self) -> bool:
        """Started, with at least one model loaded (``stats().models`` says which did not load, and why)."""
        return self._serving is not None and not self._closing and bool(self._models)

    @property
    def healthy(self) -> bool:
        """Ready, and every configured model loaded: a model that did not load is an operator's error to see."""
        return self.ready and not self._failed

    def stats(self) -> EngineStats:
        models = {name: READY for name in self._models}
        models.update({name: error.message for name, error in self._failed.items()})
        return EngineStats(
            device=self.device,
            queue_depth=len(self._queue) if self._queue is not None else 0,
            running=self._running,
            batches=sum(self._batch_sizes.values()),
            batch_sizes=dict(sorted(self._batch_sizes.items())),
            images_generated=self._images,
            requests_refused=self._refused,
            requests_dropped=self._dropped,
            batches_at_once=self._queue.started_at_once if self._queue is not None else 0,
            batches_held=self._queue.held if self._queue is not None else 0,
            models=models,
            options={name: model.options for name, model in sorted(self._models.items())},
        )

    # --- one request ---

    async def generate(self, request: ImageRequest, progress: Callable[[Progress], None] | None = None) -> ImageResult:
        """Check, queue and draw ``request``; cancelling the caller before its batch starts drops it.

        ``progress`` hears of every step on the loop, and gets ``request.partial_images``
        previews when the request streams (``local_backend.previews``).
        """
        started = time.perf_counter()
        if self._queue is None:
            raise GatewayError(ErrorCode.INTERNAL, "the local backend has not been started")
        if self._closing:
            raise GatewayError(ErrorCode.OVERLOADED, "the local backend is shutting down")
        work = resolve(request, self._model(request.model).rules)
        tracer = otel_context.get_value(TRACER_CONTEXT_KEY)  # None unless the gateway traces this request
        enqueued_ns = time.time_ns()
        loop = asyncio.get_running_loop()
        job = Job(work=work, future=loop.create_future(), enqueued_at=loop.time())
        try:
            self._queue.put(job)
        except GatewayError:
            self._refused += 1
            raise
        if progress is not None:
            previews = request.partial_images if request.stream else 0
            self._reporters[id(job)] = Reporter(loop, progress, previews, (work.width, work.height), work.output_format)
        self._report_depth(work.model)
        try:
            images, inference, energy, batch = await job.future
        except asyncio.CancelledError:
            if self._queue.discard(job):
                self._dropped += 1
                self._report_depth(work.model)
            elif id(job) in self._reporters:  # being drawn: its pipeline call may stop early
                self._reporters[id(job)].cancelled = True
            raise
        finally:
            self._reporters.pop(id(job), None)
        if tracer is not None:
            _trace(tracer, work, enqueued_ns, batch, energy)
        return ImageResult(
            images=images,
            created=int(time.time()),
            model=request.model,
            provider=self.name,
            id=f"local-{uuid.uuid4().hex[:16]}",
            seed=work.seed,
            timings=Timings(inference=inference, total=time.perf_counter() - started),
            usage=Usage(images_generated=len(images)),
            energy=energy,
            speed_options=self._models[work.model].options.label(),
        )

    def _model(self, name: str) -> LoadedModel:
        model = self._models.get(name)
        if model is not None:
            return model
        if name in self._failed:  # why is in the log and in stats(): paths on this server, not for clients
            raise GatewayError(
                ErrorCode.OVERLOADED,
                f"local model {name!r} is not available: it did not load on this backend",
                reason=FailureReason.MODEL_UNAVAILABLE,
            )
        served = ", ".join(sorted(self.settings.models)) or "none"
        raise GatewayError(
            ErrorCode.MODEL_NOT_FOUND,
            f"model {name!r} is not one of this local backend's models ({served})",
            param="model",
        )

    def _report_depth(self, model: str) -> None:
        if self.observer is not None and self._queue is not None:
            self.observer.queue_depth(model, self._queue.depth_of(model))

    # --- the device ---

    async def _serve(self) -> None:
        assert self._queue is not None
        while True:
            batch = await self._queue.next_batch()
            self._report_depth(batch[0].work.model)
            # Shielded: closing the engine stops this loop, never a batch half drawn.
            self._in_flight = asyncio.ensure_future(self._run(batch))
            try:
                await asyncio.shield(self._in_flight)
            except Exception:  # a fault of ours must fail this batch, never stop the device loop
                log.exception("local_batch_failed", model=batch[0].work.model)
                for job in batch:
                    _fail(job, GatewayError(ErrorCode.UPSTREAM_ERROR, "the local backend failed on this batch"))

    async def _run(self, batch: list[Job]) -> None:
        """Draw one batch on the device thread, then hand each job its images (encoded off that thread)."""
        assert self._executor is not None
        works = [job.work for job in batch]
        model = self._models[works[0].model]
        self._running = sum(work.n for work in works)
        loop = asyncio.get_running_loop()
        began = time.time_ns()
        try:
            reporters = [self._reporters.get(id(job)) for job in batch]
            drawn, joules = await loop.run_in_executor(
                self._executor,
                measured,
                self._meter,
                model.draw,
                works,
                works[0].images_per_call(self.settings.max_batch_size),
                reporters,
            )
        except Exception as exc:
            error = _drawing_error(exc, works[0])
            for job in batch:
                _fail(job, error)
            return
        finally:
            self._running = 0
        self._batch_sizes.update(drawn.calls)
        self._images += sum(drawn.calls)
        if self.observer is not None:
            for count, seconds in zip(drawn.calls, drawn.call_seconds, strict=True):
                self.observer.batch_drawn(model.rules.name, count, seconds)
        drawn_images = sum(drawn.calls)
        span = BatchSpan(began, time.time_ns(), drawn_images, len(drawn.calls))
        for job, images in zip(batch, drawn.images, strict=True):
            energy = share(self._meter, joules, len(images), drawn_images)
            task = asyncio.create_task(self._deliver(job, images, drawn, energy, span))
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)

    async def _deliver(
        self, job: Job, images: list[Image.Image], drawn: Drawn, energy: Energy | None, span: BatchSpan
    ) -> None:
        if job.future.done():
            return  # its caller went away while it was drawn
        try:
            encoded = await _encode(job.work, images)
        except Exception as exc:
            _fail(job, _drawing_error(exc, job.work))
            return
        reporter = self._reporters.get(id(job))
        if reporter is not None:
            await reporter.flushed()  # its previews reach the caller before its final image
        if not job.future.done():
            job.future.set_result((encoded, drawn.seconds, energy, span))


class BatchSpan(NamedTuple):
    """When a batch was on the device (ns since the epoch), for the trace of each request in it."""

    began: int
    ended: int
    images: int
    calls: int


def _trace(tracer: Any, work: Work, enqueued_ns: int, batch: BatchSpan, energy: Energy | None) -> None:
    """The request's wait in the queue and its batch, as spans under the current one (the upstream attempt)."""
    tracer.start_span("local queue", start_time=enqueued_ns, attributes={"image_gateway.local.model": work.model}).end(
        end_time=batch.began
    )
    attributes: dict[str, Any] = {
        "image_gateway.local.model": work.model,
        "image_gateway.local.batch_images": batch.images,
        "image_gateway.local.pipeline_calls": batch.calls,
        "image_gateway.images": work.n,
    }
    if energy is not None:
        attributes["image_gateway.energy_kwh"] = energy.kwh
        attributes["image_gateway.energy_method"] = energy.method
    tracer.start_span("local batch", start_time=batch.began, attributes=attributes).end(end_time=batch.ended)


async def _encode(work: Work, images: list[Image.Image]) -> list[GeneratedImage]:
    """The images as files, each on a thread of its own (every job of a batch at once)."""
    generated = []
    encoded = await encode_images(images, work.output_format, work.output_compression)
    for seed, image, (data, media_type) in zip(work.seeds, images, encoded, strict=True):
        generated.append(
            GeneratedImage(data=data, width=image.width, height=image.height, seed=seed, media_type=media_type)
        )
    return generated


def _fail(job: Job, error: GatewayError) -> None:
    if not job.future.done():
        job.future.set_exception(
            GatewayError(
                error.code, error.message, param=error.param, retry_after=error.retry_after, reason=error.reason
            )
        )


def _drawing_error(exc: BaseException, work: Work) -> GatewayError:
    """What a failure on the device means to the client: its own fault, a full GPU, or ours."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, torch.OutOfMemoryError):
        return GatewayError(
            ErrorCode.OVERLOADED, f"the device ran out of memory drawing {work.width}x{work.height}", retry_after=1.0
        )
    log.error("local_drawing_failed", model=work.model, operation=work.operation.value, exc_info=exc)
    return GatewayError(ErrorCode.UPSTREAM_ERROR, f"local model {work.model!r} failed to draw: {type(exc).__name__}")
