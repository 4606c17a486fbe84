"""The HTTP adapter every provider shares: encode ▸ httpx ▸ decode, with errors translated once, here.

A provider module only says which of its dialect's endpoints serves which operation, how
many images one call may ask for, and which error table reads its answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx
import msgspec

from adapters.base import CallOptions, HttpProviderSettings
from schemas.canonical import (
    ErrorCode,
    GatewayError,
    GeneratedImage,
    ImageRequest,
    ImageResult,
    Operation,
    ResponseFormat,
)
from schemas.dialect import BodyKind, Endpoint, ErrorTable, sniff_image

__all__ = ["HttpAdapter"]

_JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}

# An upstream's own failure is not the client's: its internal error, or its refusal of the
# gateway's key, reaches the client as an upstream error (502), and a fallback may still help.
_RECAST: Mapping[ErrorCode, str] = {
    ErrorCode.INTERNAL: "provider {name} failed internally: {message}",
    ErrorCode.UNAUTHORIZED: "provider {name} refused the gateway's credentials",
}


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: rare for these APIs; the retry policy's own backoff applies


def _transport_failure(provider: str, doing: str, exc: httpx.HTTPError) -> GatewayError:
    """A transport error → the canonical error, in one place.

    httpx-aiohttp reports every aiohttp connection error as ``ConnectTimeout``: a "timeout"
    caused by an aiohttp error that is no timeout (refused, reset) is a connection failure.
    """
    cause = exc.__cause__
    misreported = (
        cause is not None and type(cause).__module__.startswith("aiohttp") and not isinstance(cause, TimeoutError)
    )
    if isinstance(exc, httpx.TimeoutException) and not misreported:
        return GatewayError(ErrorCode.UPSTREAM_TIMEOUT, f"provider {provider} {doing} timed out", provider=provider)
    reason = type(cause if misreported else exc).__name__
    return GatewayError(ErrorCode.UPSTREAM_ERROR, f"provider {provider} {doing} failed: {reason}", provider=provider)


class HttpAdapter:
    """A provider reached over HTTP through the dialect it speaks."""

    errors: ClassVar[ErrorTable]
    # Most images one upstream call may ask for; a larger n is split into concurrent calls.
    max_n_per_call: ClassVar[int] = 1

    def __init__(self, name: str, config: HttpProviderSettings, client: httpx.AsyncClient) -> None:
        self.name = name
        self.config = config
        self.client = client
        self.endpoints: Mapping[Operation, Endpoint[Any, Any]] = self.endpoints_for(config)
        # Parsed once: httpx would otherwise parse the URL string on every call.
        self._urls = {e.path: httpx.URL(config.base_url + e.path) for e in self.endpoints.values()}
        self._auth = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._image_hosts = frozenset({urlsplit(config.base_url).netloc, *config.image_hosts})
        self._in_flight = asyncio.Semaphore(config.max_concurrency)

    def endpoints_for(self, config: HttpProviderSettings) -> Mapping[Operation, Endpoint[Any, Any]]:
        """The endpoint serving each operation this provider can do."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Nothing to release: the httpx client is shared and closed by the app."""

    async def generate(self, request: ImageRequest, options: CallOptions) -> ImageResult:
        endpoint = self.endpoints.get(request.operation)
        if endpoint is None:
            raise GatewayError(
                ErrorCode.OPERATION_NOT_SUPPORTED,
                f"provider {self.name} cannot do {request.operation.value}",
                provider=self.name,
            )
        started = time.perf_counter()
        parts = self._split(request)
        if len(parts) == 1:  # the usual case, without the cost of tasks
            result = await self._call(endpoint, request, options)
        else:
            results = await asyncio.gather(*(self._call(endpoint, part, options) for part in parts))
            result = results[0]
            for extra in results[1:]:
                result.images.extend(extra.images)
        if request.response_format is ResponseFormat.B64_JSON and any(image.url for image in result.images):
            await asyncio.gather(*(self._fetch(image, options) for image in result.images if image.url))
        result.provider = self.name
        result.timings.total = time.perf_counter() - started
        return result

    def _split(self, request: ImageRequest) -> list[ImageRequest]:
        """One request per upstream call; each part keeps its own seed so results stay reproducible."""
        if request.n <= self.max_n_per_call:
            return [request]
        parts = []
        for offset in range(0, request.n, self.max_n_per_call):
            count = min(self.max_n_per_call, request.n - offset)
            seed = None if request.seed is None else request.seed + offset
            parts.append(msgspec.structs.replace(request, n=count, seed=seed))
        return parts

    def _timeout(self, options: CallOptions) -> httpx.Timeout:
        """Per-read (first byte included) and connect timeouts, never beyond what the call has left."""
        read, connect = self.config.timeout.read, self.config.timeout.connect
        if options.timeout is not None:
            read, connect = min(read, options.timeout), min(connect, options.timeout)
        return httpx.Timeout(read, connect=connect)

    async def _call(self, endpoint: Endpoint[Any, Any], request: ImageRequest, options: CallOptions) -> ImageResult:
        wire = endpoint.from_canonical(request)
        if endpoint.body_kind is BodyKind.MULTIPART:
            data, files = endpoint.multipart_fields(wire)  # type: ignore[attr-defined]
            outgoing = self.client.build_request(
                "POST",
                self._urls[endpoint.path],
                data=data,
                files=files,
                headers=self._auth,
                timeout=self._timeout(options),
            )
        else:
            outgoing = self.client.build_request(
                "POST",
                self._urls[endpoint.path],
                content=msgspec.json.encode(wire),
                headers={**_JSON_HEADERS, **self._auth},
                timeout=self._timeout(options),
            )
        async with self._in_flight:
            status, headers, body = await self._send(outgoing)
        return self._decode(endpoint, request, status, headers, body)

    async def _send(self, outgoing: httpx.Request) -> tuple[int, httpx.Headers, bytearray]:
        """Send and read the whole answer, refusing one larger than ``max_response_bytes``."""
        cap = self.config.max_response_bytes
        try:
            response = await self.client.send(outgoing, stream=True)
            try:
                declared = int(response.headers.get("content-length") or 0)
                if declared > cap:
                    raise self._too_large(cap)
                # One growing buffer, decoded in place: a large answer is held once, not as chunks plus a join.
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    if len(body) + len(chunk) > cap:
                        raise self._too_large(cap)
                    body += chunk
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            raise _transport_failure(self.name, "call", exc) from exc
        return response.status_code, response.headers, body

    def _too_large(self, cap: int) -> GatewayError:
        return GatewayError(
            ErrorCode.UPSTREAM_ERROR, f"provider {self.name} answered more than {cap} bytes", provider=self.name
        )

    def _decode(
        self, endpoint: Endpoint[Any, Any], request: ImageRequest, status: int, headers: httpx.Headers, body: bytearray
    ) -> ImageResult:
        if status >= 400:
            error = self.errors.parse(status, body, _retry_after(headers))
            if error.code in _RECAST:
                message = _RECAST[error.code].format(name=self.name, message=error.message)
                error = GatewayError(ErrorCode.UPSTREAM_ERROR, message, retry_after=error.retry_after)
            error.provider = self.name
            raise error
        content_type = headers.get("content-type", "")
        if "json" not in content_type:
            raise GatewayError(
                ErrorCode.UPSTREAM_ERROR,
                f"provider {self.name} answered {content_type or 'no content type'} instead of JSON",
                provider=self.name,
            )
        try:
            return endpoint.decode_response(body, request)
        except GatewayError as error:
            error.provider = self.name
            raise

    async def _fetch(self, image: GeneratedImage, options: CallOptions) -> None:
        """Replace an upstream URL by its bytes: only from this provider's hosts, and only up to the cap."""
        assert image.url is not None
        if urlsplit(image.url).netloc not in self._image_hosts:
            raise GatewayError(
                ErrorCode.UPSTREAM_ERROR,
                f"provider {self.name} returned an image URL on a host it is not allowed to serve from",
                provider=self.name,
            )
        cap = self.config.max_image_bytes
        try:
            async with self.client.stream("GET", image.url, timeout=self._timeout(options)) as response:
                if response.status_code != 200:
                    raise GatewayError(
                        ErrorCode.UPSTREAM_ERROR,
                        f"provider {self.name} image URL answered {response.status_code}",
                        provider=self.name,
                    )
                chunks, size = [], 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > cap:
                        raise GatewayError(
                            ErrorCode.UPSTREAM_ERROR,
                            f"provider {self.name} image is larger than {cap} bytes",
                            provider=self.name,
                        )
                    chunks.append(chunk)
        except httpx.HTTPError as exc:
            raise _transport_failure(self.name, "image download", exc) from exc
        data = b"".join(chunks)
        media_type = sniff_image(data)
        if media_type is None:
            raise GatewayError(
                ErrorCode.UPSTREAM_ERROR, f"provider {self.name} image URL did not hold an image", provider=self.name
            )
        image.data, image.media_type, image.url = data, media_type, None
