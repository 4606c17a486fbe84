"""The HTTP adapter every provider shares: encode ▸ send ▸ decode, with errors translated once, here.

A provider module only says which of its dialect's endpoints serves which operation and
which error table reads its answers; each endpoint says how many images one call may ask for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import urlsplit

import msgspec

from adapters.base import AdapterBase, CallOptions, HttpProviderSettings
from adapters.upstream import Answer, AnswerTooLarge, UpstreamClient, UpstreamFailure, encode_multipart
from schemas.canonical import (
    ErrorCode,
    FailureReason,
    GatewayError,
    GeneratedImage,
    ImageRequest,
    ImageResult,
    Operation,
    encode_hook,
)
from schemas.dialect import BodyKind, Endpoint, ErrorTable, parse_retry_after, sniff_image
from schemas.imageforms import Conversion, conversion
from schemas.sustainability import summed

__all__ = ["HttpAdapter", "UpstreamUnreachable"]

_JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}

# An upstream's own failure is not the client's: its internal error reaches the client as an
# upstream error (502), and a fallback may still help. (Its refusal of the gateway's key: below.)
_RECAST: Mapping[ErrorCode, str] = {
    ErrorCode.INTERNAL: "provider {name} failed internally: {message}",
}
REQUEST_ID_HEADER = "X-Request-ID"
TRACEPARENT_HEADER = "traceparent"


class UpstreamUnreachable(GatewayError):
    """No connection could be made: the request never left, so another server of the same backend may take it."""


class HttpAdapter(AdapterBase):
    """A provider reached over HTTP through the dialect it speaks."""

    errors: ClassVar[ErrorTable]

    def __init__(self, name: str, config: HttpProviderSettings, client: UpstreamClient) -> None:
        self.name = name
        self.config = config
        self.client = client
        self.endpoints: Mapping[Operation, Endpoint[Any, Any]] = self.endpoints_for(config)
        self._urls = {e.path: config.base_url + e.path for e in self.endpoints.values()}
        self._auth = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._json_headers = {**_JSON_HEADERS, **self._auth}
        self._image_hosts = frozenset({urlsplit(config.base_url).netloc, *config.image_hosts})
        self._in_flight = asyncio.Semaphore(config.max_concurrency)

    def endpoints_for(self, config: HttpProviderSettings) -> Mapping[Operation, Endpoint[Any, Any]]:
        """The endpoint serving each operation this provider can do."""
        raise NotImplementedError

    async def generate(self, request: ImageRequest, options: CallOptions) -> ImageResult:
        endpoint = self.endpoints.get(request.operation)
        if endpoint is None:
            raise GatewayError(
                ErrorCode.OPERATION_NOT_SUPPORTED,
                f"provider {self.name} cannot do {request.operation.value}",
                provider=self.name,
            )
        started = time.perf_counter()
        parts = self._split(request, endpoint.max_n_per_call)
        if len(parts) == 1:  # the usual case, without the cost of tasks
            result = await self._call(endpoint, request, options)
        else:
            results = await asyncio.gather(*(self._call(endpoint, part, options) for part in parts))
            result = results[0]
            for extra in results[1:]:
                result.images.extend(extra.images)
                result.environment_impact = summed(result.environment_impact, extra.environment_impact)
        fetches = [image for image in result.images if conversion(image, request.response_format) is Conversion.FETCH]
        if fetches:  # within the upstream call: a failed download is a failed attempt
            await asyncio.gather(*(self._fetch(image, options) for image in fetches))
        result.provider = self.name
        result.timings.total = time.perf_counter() - started
        return result

    @staticmethod
    def _split(request: ImageRequest, max_n_per_call: int) -> list[ImageRequest]:
        """One request per upstream call; each part keeps its own seed so results stay reproducible."""
        if request.n <= max_n_per_call:
            return [request]
        parts = []
        for offset in range(0, request.n, max_n_per_call):
            count = min(max_n_per_call, request.n - offset)
            seed = None if request.seed is None else request.seed + offset
            parts.append(msgspec.structs.replace(request, n=count, seed=seed))
        return parts

    def _timeouts(self, options: CallOptions) -> tuple[float, float]:
        """Connect and per-read (first byte included) timeouts, never beyond what the call has left."""
        read, connect = self.config.timeout.read, self.config.timeout.connect
        if options.timeout is not None:
            read, connect = min(read, options.timeout), min(connect, options.timeout)
        return connect, read

    async def _call(self, endpoint: Endpoint[Any, Any], request: ImageRequest, options: CallOptions) -> ImageResult:
        wire = endpoint.from_canonical(request)
        if endpoint.body_kind is BodyKind.MULTIPART:
            body, content_type = encode_multipart(*endpoint.multipart_fields(wire))  # type: ignore[attr-defined]
            headers = {**self._auth, "Content-Type": content_type}
        else:
            body, headers = msgspec.json.encode(wire, enc_hook=encode_hook), self._json_headers
        answer = await self._send(self._urls[endpoint.path], body, headers, options, self.config.max_response_bytes)
        return self._decode(endpoint, request, answer)

    async def _send(
        self, url: str, body: bytes | None, headers: Mapping[str, str] | None, options: CallOptions, cap: int
    ) -> Answer:
        """One exchange within this provider's concurrency limit, its failures translated here."""
        connect, read = self._timeouts(options)
        method = "GET" if body is None else "POST"
        if options.request_id is not None:
            headers = {**(headers or {}), REQUEST_ID_HEADER: options.request_id}
        if options.traceparent is not None:
            headers = {**(headers or {}), TRACEPARENT_HEADER: options.traceparent}
        try:
            async with self._in_flight:
                return await self.client.send(
                    method, url, body=body, headers=headers, connect_timeout=connect, read_timeout=read, max_bytes=cap
                )
        except UpstreamFailure as failure:
            doing = "call" if body is not None else "image download"
            if failure.timed_out:
                raise GatewayError(
                    ErrorCode.UPSTREAM_TIMEOUT, f"provider {self.name} {doing} timed out", provider=self.name
                ) from failure
            if not failure.reached:
                raise UpstreamUnreachable(
                    ErrorCode.UPSTREAM_ERROR,
                    f"provider {self.name} could not be reached ({failure.reason})",
                    provider=self.name,
                ) from failure
            raise GatewayError(
                ErrorCode.UPSTREAM_ERROR, f"provider {self.name} {doing} failed: {failure.reason}", provider=self.name
            ) from failure
        except AnswerTooLarge as exc:
            what = "answered more than" if body is not None else "image is larger than"
            raise GatewayError(
                ErrorCode.UPSTREAM_ERROR, f"provider {self.name} {what} {exc.limit} bytes", provider=self.name
            ) from exc

    def _decode(self, endpoint: Endpoint[Any, Any], request: ImageRequest, answer: Answer) -> ImageResult:
        status, headers, body = answer.status, answer.headers, answer.body
        if status >= 400:
            error = self.errors.parse(status, body, parse_retry_after(headers.get("retry-after")))
            if status == 401 or error.code is ErrorCode.UNAUTHORIZED:
                error = self._credentials_refused(status, error)
            elif error.code in _RECAST:
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
            # base64 stays a slice of the answer where the answer is plain (checked as it was read)
            return endpoint.decode_response(body, request, slices=True, plain=answer.plain)
        except GatewayError as error:
            error.provider = self.name
            raise

    def _credentials_refused(self, status: int, said: GatewayError) -> GatewayError:
        """The upstream refused the gateway's own key (never the client's): 502, called once, cooled down.

        A 401 is always that; a 403 when its body names no other code (a 403 that says
        ``content_policy_violation`` is still about the prompt). The key itself is never in the text.
        """
        return GatewayError(
            ErrorCode.UPSTREAM_ERROR,
            f"provider {self.name} answered {status}, refusing the gateway's credentials: {said.message}",
            reason=FailureReason.UPSTREAM_CREDENTIALS,
        )

    async def _fetch(self, image: GeneratedImage, options: CallOptions) -> None:
        """Replace an upstream URL by its bytes: only from this provider's hosts, and only up to the cap."""
        assert image.url is not None
        try:
            host = urlsplit(image.url).netloc
        except ValueError:  # not a URL at all (a bracket left open): no host of this provider's
            host = None
        if host not in self._image_hosts:
            raise GatewayError(
                ErrorCode.UPSTREAM_ERROR,
                f"provider {self.name} returned an image URL on a host it is not allowed to serve from",
                provider=self.name,
            )
        answer = await self._send(image.url, None, None, options, self.config.max_image_bytes)
        if answer.status != 200:
            raise GatewayError(
                ErrorCode.UPSTREAM_ERROR,
                f"provider {self.name} image URL answered {answer.status}",
                provider=self.name,
            )
        data = bytes(answer.body)
        media_type = sniff_image(data)
        if media_type is None:
            raise GatewayError(
                ErrorCode.UPSTREAM_ERROR, f"provider {self.name} image URL did not hold an image", provider=self.name
            )
        image.data, image.media_type, image.url = data, media_type, None
