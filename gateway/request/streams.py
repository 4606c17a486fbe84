"""Streamed answers, OpenAI's way: ``stream: true`` answers ``text/event-stream``.

The events are exactly those of the OpenAI Images API (the SDK's ``ImageGenStreamEvent`` and
``ImageEditStreamEvent``): up to ``partial_images`` ``image_generation.partial_image`` (or
``image_edit.partial_image``) events as the backend draws previews, then one
``image_generation.completed`` (``image_edit.completed``) with the final image. Each is
``event: <type>`` and ``data: <JSON>`` followed by a blank line (``gateway.request.sse``).

``gateway.request.serve`` answers a ``StreamedAnswer`` once the request is authorized,
decoded and admitted (``gateway.request.modes.Streamed``): every refusal before that is a
plain JSON error. The final event is made by the tail every mode runs
(``gateway.request.steps.produce``). What fails after the
first byte was sent is an ``error`` event in the dialect's own envelope
(``{"type": "error", "error": {...}}``, which the SDK raises as ``APIError``), never a cut
connection. A client that hangs up cancels the generation (``schemas.disconnect``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec
import structlog
from litestar.types import HTTPResponseStartEvent, Receive, Send

from gateway.observability import metrics
from gateway.request.sse import EVENT_STREAM, KEEPALIVE, KEEPALIVE_S, asgi_headers, frame
from schemas.canonical import (
    ErrorCode,
    GatewayError,
    GeneratedImage,
    ImageRequest,
    ImageResult,
    Operation,
    Progress,
    as_gateway_error,
)
from schemas.dialect import Endpoint, ErrorTable, error_answer
from schemas.disconnect import ClientGone, unless_client_leaves
from schemas.openai import OpenAIUsage, produced, usage_of

if TYPE_CHECKING:
    from gateway.request.admitted import Completed

__all__ = [
    "EVENT_STREAM",
    "STREAM_EVENT_TYPES",
    "Final",
    "StreamedAnswer",
    "completed_event",
    "partial_image_event",
    "streams",
]

log = structlog.get_logger("gateway.streams")

# KEEPALIVE_S (gateway.request.sse): seconds without an event after which a comment line is sent, so that a
# proxy's idle timeout does not cut a slow generation. Read here at each wait (a test may shorten it).
# The event type prefix of each operation that streams; variations do not (their endpoints refuse `stream`).
_PREFIX = {Operation.GENERATE: "image_generation", Operation.EDIT: "image_edit"}
_EVENT_DEFAULTS = {"size": "auto", "quality": "auto", "background": "auto", "output_format": "png"}


class Final(NamedTuple):
    """The end of a stream's generation: its final event, and the tail's value (None: a replay, which
    generated nothing)."""

    event: bytes
    completed: Completed | None = None


# What a stream runs: generate, reporting progress to the callback, then make the final event.
Generation = Callable[[Callable[[Progress], None]], Awaitable[Final]]


class _ImageEvent(msgspec.Struct, kw_only=True):
    """The fields every image event carries (``openai.types.ImageGenPartialImageEvent`` and the rest)."""

    type: str
    b64_json: str
    created_at: int
    size: str
    quality: str
    background: str
    output_format: str


class PartialImageEvent(_ImageEvent, kw_only=True):
    partial_image_index: int


class CompletedEvent(_ImageEvent, kw_only=True):
    """The final image; ``usage`` as the backend counted tokens (all 0 for diffusion models)."""

    usage: OpenAIUsage


class StreamErrorEvent(msgspec.Struct, kw_only=True):
    """A failure after the stream began: ``type`` is ``error``, ``error`` the dialect's own error body."""

    type: str
    error: dict[str, Any]


# What a streamed answer's ``data:`` lines hold (the OpenAPI document lists them).
STREAM_EVENT_TYPES: tuple[type[msgspec.Struct], ...] = (PartialImageEvent, CompletedEvent, StreamErrorEvent)


def streams(endpoint: Endpoint[Any, Any]) -> bool:
    """Whether ``endpoint`` answers ``stream: true`` with events (its request has ``partial_images``)."""
    return any(field.name == "partial_images" for field in msgspec.structs.fields(endpoint.request_type))


def _settings(request: ImageRequest, image: GeneratedImage) -> dict[str, Any]:
    """size, quality, background and output_format of an event: what the plain answer states
    (``schemas.openai.produced``), and ``auto`` (``png``) where it would leave one out, since the events
    must carry all four and OpenAI's document allows only its own values there."""
    return {"created_at": int(time.time()), **_EVENT_DEFAULTS, **produced(request, [image])}


def partial_image_event(request: ImageRequest, progress: Progress) -> bytes | None:
    """The ``*.partial_image`` event for a progress report that carries a preview; None for a bare step."""
    preview = progress.preview
    if preview is None or (b64 := preview.as_b64()) is None:
        return None
    event_type = f"{_PREFIX[request.operation]}.partial_image"
    event = PartialImageEvent(
        type=event_type, b64_json=b64, partial_image_index=progress.index, **_settings(request, preview)
    )
    return frame(msgspec.json.encode(event), event_type)


def completed_event(request: ImageRequest, result: ImageResult) -> bytes:
    """The ``*.completed`` event with the final image (the stream asks for base64 images from the backend)."""
    if not result.images or (b64 := result.images[0].as_b64()) is None:
        raise GatewayError(ErrorCode.UPSTREAM_ERROR, "the backend answered no image to stream")
    image = result.images[0]
    usage = usage_of(result.usage)
    event_type = f"{_PREFIX[request.operation]}.completed"
    event = CompletedEvent(type=event_type, b64_json=b64, usage=usage, **_settings(request, image))
    return frame(msgspec.json.encode(event), event_type)


def error_event(error: GatewayError, errors: ErrorTable) -> bytes:
    """The dialect's error envelope as an ``error`` event: ``{"type": "error", "error": {...}}``."""
    envelope = msgspec.json.decode(error_answer(error, errors).body)
    inner = envelope.get("error", envelope) if isinstance(envelope, dict) else envelope
    return frame(msgspec.json.encode({"type": "error", "error": inner}), "error")


async def _next(events: asyncio.Queue[bytes | None]) -> bytes | None:
    """The next event, or a keep-alive comment when none came for ``KEEPALIVE_S``."""
    try:
        async with asyncio.timeout(KEEPALIVE_S):  # a cancelled get() leaves its event in the queue
            return await events.get()
    except TimeoutError:
        return KEEPALIVE


async def _nothing(outcome: str, error: GatewayError | None, completed: Completed | None) -> None:
    """The default ``finish``: nothing to record."""


class StreamedAnswer:
    """``serve``'s answer to a request with ``stream: true``: sent by ``gateway.pipeline`` as server-sent events.

    ``finish(outcome, error, completed)`` is called once when the stream ends (``serve_recorded``
    counts and logs the request then, not when the headers go out), after ``closing``.
    """

    def __init__(
        self,
        endpoint: Endpoint[Any, Any],
        request: ImageRequest,
        receive: Receive,
        headers: dict[str, str],
        generation: Generation,
    ) -> None:
        self.endpoint = endpoint
        self.request = request
        self.receive = receive
        self.headers = headers
        self.generation = generation
        self.finish: Callable[[str, GatewayError | None, Completed | None], Awaitable[None]] = _nothing
        self.closing: list[Callable[[], Awaitable[None]]] = []  # run when the stream ends, however it ends
        self.completed: Completed | None = None  # the tail's value, once the final event is made

    async def send(self, send: Send, extra_headers: list[tuple[bytes, bytes]], errors: ErrorTable) -> None:
        """Send the headers, then each event as it comes; the end of the stream ends the request."""
        raw_headers = [*asgi_headers(self.headers), *extra_headers]
        events: asyncio.Queue[bytes | None] = asyncio.Queue()
        outcome: list[tuple[str, GatewayError | None]] = []
        metrics.STREAMS_OPEN.inc()
        try:
            start: HTTPResponseStartEvent = {"type": "http.response.start", "status": 200, "headers": raw_headers}
            await send(start)
            producing = asyncio.create_task(self._produce(events, errors, outcome))
            try:
                while (chunk := await _next(events)) is not None:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await producing
                if outcome and outcome[0][0] != "client_gone":
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            finally:
                if not producing.done():  # the sending failed or was cancelled: the generation stops too
                    producing.cancel()
                    await asyncio.gather(producing, return_exceptions=True)
                    outcome.append(("client_gone", None))
        finally:
            metrics.STREAMS_OPEN.dec()
            for closing in self.closing:
                await closing()
            await self.finish(*(outcome[0] if outcome else ("client_gone", None)), self.completed)

    async def _produce(
        self, events: asyncio.Queue[bytes | None], errors: ErrorTable, outcome: list[tuple[str, GatewayError | None]]
    ) -> None:
        """Run the generation in this task, queueing an event per preview, then the final or error event."""
        request = self.request
        done = False

        def progress(report: Progress) -> None:
            if done:
                return  # a late preview never follows the final event
            event = partial_image_event(request, report)
            if event is not None:
                metrics.child(metrics.STREAM_EVENTS, "partial_image").inc()
                events.put_nowait(event)

        try:
            final = await unless_client_leaves(self.receive, self.generation(progress))
            self.completed = final.completed
            metrics.child(metrics.STREAM_EVENTS, "completed").inc()
            outcome.append(("ok", None))
            events.put_nowait(final.event)
        except ClientGone:
            outcome.append(("client_gone", None))
        except Exception as exc:  # after the first byte, a failure is an event in the stream
            error = as_gateway_error(exc)
            if error is None:
                log.error("unhandled_exception", exc_info=exc)
                error = GatewayError(ErrorCode.INTERNAL, "internal error")
            error = self.endpoint.client_error(error)
            metrics.child(metrics.STREAM_EVENTS, "error").inc()
            outcome.append((error.code.value, error))
            events.put_nowait(error_event(error, errors))
        finally:
            done = True
            events.put_nowait(None)
