"""Any OpenAI-compatible images server (``kind: openai``): generations, edits, variations, streams.

The wire is ``schemas.openai_upstream``; what the server can do is what its provider entry
declares (``OpenAISettings``). A client's ``stream: true`` on generations and edits goes upstream
as ``stream`` and ``partial_images`` when the entry says the server streams: each partial image
it sends is reported through ``CallOptions.progress`` as it arrives (the gateway's own stream
forwards it), and the ``*.completed`` event is the result. Bounded: the events and the bytes of
one event (the entry's ``stream_max_*``), the bytes in all (``max_response_bytes``), each read
(``timeout.read``) and the whole call (the router's timeout, else ``timeout.total``).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast

import msgspec

from adapters.base import CallOptions, HttpProviderSettings
from adapters.eventstream import Event, EventParser, EventStreamClient, StreamTooLarge
from adapters.http import REQUEST_ID_HEADER, TRACEPARENT_HEADER, HttpAdapter, UpstreamUnreachable
from adapters.upstream import AnswerTooLarge, UpstreamClient, UpstreamFailure, encode_multipart
from schemas import openai_upstream
from schemas.canonical import ErrorCode, GatewayError, ImageRequest, ImageResult, Operation, Progress
from schemas.dialect import Endpoint
from schemas.openai_upstream import DEFAULT_EXTENSION_NAMES, EXTENSIONS, OpenAIEndpoint, StreamEvent, WireSettings

__all__ = ["OpenAIAdapter", "OpenAISettings"]

_EVENT = msgspec.json.Decoder(StreamEvent)
# The partial images already reported to each client's stream (keyed by its progress callback), so that a
# retry, or a fallback to another `kind: openai` target, never sends the client an index it already has.
_REPORTED: weakref.WeakKeyDictionary[Callable[[Progress], None], set[int]] = weakref.WeakKeyDictionary()


class _Timeouts(Protocol):
    connect: float
    read: float
    total: float


class OpenAISettings(HttpProviderSettings, Protocol):
    """What the adapter reads of a ``kind: openai`` entry (``gateway.config.OpenAIProvider``)."""

    organization: str
    project: str
    headers: dict[str, str]
    operations: list[Operation]
    response_format: str | None
    stream: bool
    extensions: bool | list[str]
    extension_names: dict[str, str]
    max_n_per_call: int
    stream_max_events: int
    stream_max_event_bytes: int
    timeout: _Timeouts


def wire_settings(config: OpenAISettings) -> WireSettings:
    """The entry's declarations as the wire module takes them."""
    declared = list(EXTENSIONS) if config.extensions is True else list(config.extensions or [])
    names = {name: config.extension_names.get(name, DEFAULT_EXTENSION_NAMES[name]) for name in declared}  # type: ignore[index]
    return WireSettings(
        response_format=cast(Any, config.response_format),
        extensions=names,
        max_n_per_call=config.max_n_per_call,
    )


class OpenAIAdapter(HttpAdapter):
    errors = openai_upstream.ERRORS

    def __init__(self, name: str, config: HttpProviderSettings, client: UpstreamClient) -> None:
        super().__init__(name, config, client)
        settings = cast(OpenAISettings, config)
        self.settings = settings
        extra = dict(settings.headers)
        if settings.organization:
            extra["OpenAI-Organization"] = settings.organization
        if settings.project:
            extra["OpenAI-Project"] = settings.project
        self._auth = {**self._auth, **extra}
        self._json_headers = {**self._json_headers, **extra}
        self._events = EventStreamClient()

    def endpoints_for(self, config: HttpProviderSettings) -> Mapping[Operation, Endpoint[Any, Any]]:
        settings = cast(OpenAISettings, config)
        wire = wire_settings(settings)
        return {operation: openai_upstream.endpoint_for(operation, wire) for operation in settings.operations}

    async def aclose(self) -> None:
        await self._events.aclose()

    def _streams(self, endpoint: OpenAIEndpoint[Any], request: ImageRequest) -> bool:
        return self.settings.stream and request.stream and endpoint.streams and request.n == 1

    def _encoded(
        self, endpoint: OpenAIEndpoint[Any], request: ImageRequest, stream: bool
    ) -> tuple[bytes, dict[str, str]]:
        body = endpoint.body(request, stream=stream)
        if isinstance(body, bytes):
            return body, self._json_headers
        encoded, content_type = encode_multipart(*body)
        return encoded, {**self._auth, "Content-Type": content_type}

    async def _call(self, endpoint: Endpoint[Any, Any], request: ImageRequest, options: CallOptions) -> ImageResult:
        assert isinstance(endpoint, OpenAIEndpoint)
        if self._streams(endpoint, request):
            return await self._call_streaming(endpoint, request, options)
        body, headers = self._encoded(endpoint, request, stream=False)
        answer = await self._send(self._urls[endpoint.path], body, headers, options, self.config.max_response_bytes)
        return self._decode(endpoint, request, answer)

    async def _call_streaming(
        self, endpoint: OpenAIEndpoint[Any], request: ImageRequest, options: CallOptions
    ) -> ImageResult:
        """One streamed exchange: partial images reported as they come, the completed event the result."""
        body, headers = self._encoded(endpoint, request, stream=True)
        headers = {**headers, "Accept": "text/event-stream"}
        if options.request_id is not None:
            headers[REQUEST_ID_HEADER] = options.request_id
        if options.traceparent is not None:
            headers[TRACEPARENT_HEADER] = options.traceparent
        reader = _StreamReader(self.name, request, options)
        parser = EventParser(self.settings.stream_max_event_bytes, self.settings.stream_max_events)
        connect, read = self._timeouts(options)
        total = options.timeout if options.timeout is not None else self.settings.timeout.total
        try:
            async with self._in_flight, asyncio.timeout(total):
                answer = await self._events.post(
                    self._urls[endpoint.path],
                    body,
                    headers,
                    connect_timeout=connect,
                    read_timeout=read,
                    max_bytes=self.config.max_response_bytes,
                    parser=parser,
                    on_event=reader.on_event,
                )
        except UpstreamFailure as failure:
            raise self._failed(failure) from failure
        except TimeoutError as exc:
            raise GatewayError(
                ErrorCode.UPSTREAM_TIMEOUT, f"provider {self.name} stream took longer than {total}s", provider=self.name
            ) from exc
        except (AnswerTooLarge, StreamTooLarge) as exc:
            raise GatewayError(
                ErrorCode.UPSTREAM_ERROR, f"provider {self.name} stream was too large: {exc}", provider=self.name
            ) from exc
        except GatewayError as error:
            error.provider = self.name
            raise
        if answer is not None:  # not a stream: an error, or one JSON body (a server that does not stream)
            return self._decode(endpoint, request, answer)
        return reader.result()

    def _failed(self, failure: UpstreamFailure) -> GatewayError:
        if failure.timed_out:
            return GatewayError(ErrorCode.UPSTREAM_TIMEOUT, f"provider {self.name} call timed out", provider=self.name)
        if not failure.reached:
            return UpstreamUnreachable(
                ErrorCode.UPSTREAM_ERROR,
                f"provider {self.name} could not be reached ({failure.reason})",
                provider=self.name,
            )
        return GatewayError(
            ErrorCode.UPSTREAM_ERROR, f"provider {self.name} stream failed: {failure.reason}", provider=self.name
        )


class _StreamReader:
    """The events of one streamed answer: previews reported, the completed image kept, an error raised."""

    def __init__(self, provider: str, request: ImageRequest, options: CallOptions) -> None:
        self.provider = provider
        self.request = request
        self.progress = options.progress
        self.wanted = min(request.partial_images, openai_upstream.MAX_PARTIAL_IMAGES)
        self.reported: set[int] = _REPORTED.setdefault(self.progress, set()) if self.progress is not None else set()
        self.completed: ImageResult | None = None

    def on_event(self, event: Event) -> bool:
        try:
            decoded = _EVENT.decode(event.data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise GatewayError(
                ErrorCode.UPSTREAM_ERROR, f"provider {self.provider} streamed an event that is not its documented shape"
            ) from exc
        kind = decoded.type or event.name
        if kind == "error" or decoded.error is not None:
            raise openai_upstream.error_from_envelope(0, decoded.error or openai_upstream.ErrorBody())
        if kind.endswith(".partial_image"):
            self._partial(decoded)
            return False
        if kind.endswith(".completed"):
            image = openai_upstream.image_of_event(decoded, self.request)
            self.completed = ImageResult(
                images=[image],
                created=decoded.created_at or 0,
                model=self.request.model,
                usage=openai_upstream.usage_of(decoded.usage, 1),
            )
            return True  # the final image: nothing after it is read
        return False  # an event type the document may add later: skipped (counted against the bound)

    def _partial(self, event: StreamEvent) -> None:
        """Report a preview the client asked for: its index within ``partial_images``, each once."""
        index = event.partial_image_index
        if self.progress is None or index is None or not 0 <= index < self.wanted or index in self.reported:
            return
        preview = openai_upstream.image_of_event(event, self.request)
        self.reported.add(index)
        self.progress(Progress(step=index + 1, steps=self.wanted + 1, preview=preview, index=index))

    def result(self) -> ImageResult:
        if self.completed is None:
            raise GatewayError(
                ErrorCode.UPSTREAM_ERROR, f"provider {self.provider} stream ended before its completed event"
            )
        if not self.completed.created:
            self.completed.created = int(time.time())
        return self.completed
