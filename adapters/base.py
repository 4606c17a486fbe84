"""The Adapter protocol: the one interface between the router and every backend."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import msgspec

from schemas.canonical import ImageRequest, ImageResult

__all__ = ["Adapter", "CallOptions", "HttpProviderSettings", "TimeoutSettings"]


class CallOptions(msgspec.Struct, kw_only=True, frozen=True):
    """What the router sets for one call."""

    timeout: float | None = None  # seconds this call may take in all (the router also enforces it)
    # The client's request id, sent upstream as X-Request-ID so provider-side logs can be matched with ours.
    request_id: str | None = None


@runtime_checkable
class Adapter(Protocol):
    """A backend that turns a canonical request into a canonical result.

    ``generate`` raises ``GatewayError`` for every failure, already translated into the
    canonical taxonomy; ``aclose`` releases what the adapter owns (not shared clients).
    """

    name: str

    async def generate(self, request: ImageRequest, options: CallOptions) -> ImageResult: ...

    async def aclose(self) -> None: ...


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
