"""The Adapter protocol: the one interface between the router and every backend."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import msgspec

from schemas.canonical import ImageRequest, ImageResult, Progress

__all__ = ["Adapter", "AdapterBase", "BackendObserver", "CallOptions", "HttpProviderSettings", "TimeoutSettings"]


class CallOptions(msgspec.Struct, kw_only=True, frozen=True):
    """What the router sets for one call."""

    timeout: float | None = None  # seconds this call may take in all (the router also enforces it)
    # The client's request id, sent upstream as X-Request-ID so provider-side logs can be matched with ours.
    request_id: str | None = None
    # Called on the event loop as the backend works (steps done, partial previews); backends that
    # cannot tell how far they are never call it. It must not block and must not raise.
    progress: Callable[[Progress], None] | None = None
    # The W3C traceparent of this call's span (gateway/observability/tracing.py), sent upstream; None: untraced.
    traceparent: str | None = None


class BackendObserver(Protocol):
    """Where a backend with a queue of its own reports as it goes (the gateway's Prometheus metrics)."""

    def queue_depth(self, model: str, depth: int) -> None: ...

    def batch_drawn(self, model: str, images: int, seconds: float) -> None: ...


@runtime_checkable
class Adapter(Protocol):
    """A backend that turns a canonical request into a canonical result: every method the app calls.

    ``generate`` raises ``GatewayError`` for every failure, already translated into the
    canonical taxonomy. The app calls ``observe`` and then ``start`` once at start-up,
    ``ready`` for ``/ready``, ``backend_status`` for the console's status page, and ``aclose``
    at shutdown (it releases what the adapter owns, not shared clients). ``AdapterBase`` gives
    each a no-op default.
    """

    name: str

    def observe(self, observer: BackendObserver) -> None:
        """Report queue depth and batches to ``observer`` (backends with a queue of their own)."""
        ...

    async def start(self) -> None:
        """Load what the backend needs before it serves (the local backend's models)."""
        ...

    async def ready(self) -> dict[str, Any] | None:
        """For ``/ready``: a report with a ``ready`` flag, or None when there is nothing to report."""
        ...

    async def backend_status(self) -> dict[str, Any] | None:
        """For the console's status page: a backend of the gateway's own (its device, queue, batches, workers,
        each model's speed options), or None for a provider that is only its calls (every HTTP provider)."""
        ...

    async def generate(self, request: ImageRequest, options: CallOptions) -> ImageResult: ...

    async def aclose(self) -> None: ...


class AdapterBase:
    """No-op defaults for the lifecycle methods of ``Adapter``: an adapter overrides what it needs."""

    name: str

    def observe(self, observer: BackendObserver) -> None:
        """Nothing to report by default."""

    async def start(self) -> None:
        """Nothing to load by default."""

    async def ready(self) -> dict[str, Any] | None:
        return None

    async def backend_status(self) -> dict[str, Any] | None:
        """Nothing beyond the provider's calls by default."""
        return None

    async def aclose(self) -> None:
        """Nothing to release by default (the upstream client is shared and closed by the app)."""


class TimeoutSettings(Protocol):
    connect: float
    read: float


class HttpProviderSettings(Protocol):
    """What an HTTP adapter reads of its provider's configuration (``gateway.config`` fills it)."""

    base_url: str
    api_key: str
    timeout: TimeoutSettings
    image_hosts: list[str]
    max_image_bytes: int
    max_response_bytes: int
    max_concurrency: int
