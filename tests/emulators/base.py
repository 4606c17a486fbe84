"""The ASGI app the four emulators share: routing, the bearer-key check, faults, the
call log and in-memory image files.

A provider emulator subclasses `Emulator`, registers its image routes with
`add_route`, and says how its provider spells codes (`provider_code`) and shapes
errors (`envelope`).
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ClassVar

from .control import Call, CallLog, Fault, FaultQueue, control_response, summarise_body
from .errors import ProviderError, canonical_for_status
from .png import colour_for, noise_png, solid_png
from .wire import (
    BodyError,
    BodyTooLarge,
    ClientGone,
    Receive,
    Request,
    Response,
    Scope,
    Send,
    TruncatedResponse,
    json_response,
)

Handler = Callable[[Request], Awaitable[Response]]

DEFAULT_API_KEY = "test-key"
DEFAULT_MAX_BODY_BYTES = 64 << 20
MAX_STORED_FILES = 10_000


class FileStore:
    """Generated images kept in memory for `GET /files/{id}.png`, oldest dropped first."""

    def __init__(self, limit: int = MAX_STORED_FILES) -> None:
        self._files: OrderedDict[str, bytes] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def put(self, data: bytes, file_id: str | None = None) -> str:
        """Store `data`; returns its id (a random one unless given)."""
        file_id = file_id or secrets.token_hex(8)
        with self._lock:
            self._files[file_id] = data
            while len(self._files) > self._limit:
                self._files.popitem(last=False)
        return file_id

    def get(self, file_id: str) -> bytes | None:
        with self._lock:
            return self._files.get(file_id)


class Emulator:
    """Base ASGI app of a provider emulator.

    Routes: the provider's image endpoints (registered by the subclass), `GET
    /files/{id}.png` for URL answers, and the control endpoints under `/_emulator/`.
    An image request is logged, then a queued fault (if any) answers or delays it,
    then the bearer key is checked, then the subclass handler runs.
    """

    name: ClassVar[str] = "emulator"

    def __init__(
        self,
        api_key: str = DEFAULT_API_KEY,
        *,
        base_url: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        noise: bool = False,
        record_calls: bool = True,
    ) -> None:
        self.api_key = api_key
        self.base_url = base_url  # set by EmulatorServer; else taken from the Host header
        self.max_body_bytes = max_body_bytes
        self.noise = noise  # answer random-pixel (incompressible) PNGs instead of solid colours
        self.record_calls = record_calls  # False: keep no call log (long benchmarks)
        self.files = FileStore()
        self._faults = FaultQueue()
        self._calls = CallLog()
        self._routes: dict[str, dict[str, Handler]] = {}

    # ----- what subclasses provide

    def add_route(self, methods: Iterable[str], path: str, handler: Handler) -> None:
        """Register an image endpoint."""
        for method in methods:
            self._routes.setdefault(path, {})[method.upper()] = handler

    def provider_code(self, canonical: str) -> str:
        """The provider's spelling of a canonical code."""
        raise NotImplementedError

    def envelope(self, error: ProviderError) -> dict[str, Any]:
        """The provider's error body for `error`."""
        raise NotImplementedError

    # ----- Python API

    def add_fault(self, fault: Fault) -> None:
        """Queue a fault for the next image requests (see `Fault`)."""
        self._faults.add(fault)

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        self._faults.clear()

    @property
    def faults(self) -> list[Fault]:
        """The faults still queued."""
        return self._faults.pending()

    @property
    def calls(self) -> list[Call]:
        """The image requests received so far, oldest first (a copy)."""
        return self._calls.snapshot()

    @property
    def request_ids(self) -> list[str | None]:
        """The ``X-Request-ID`` of each image request received, oldest first (None where none was sent)."""
        return [call.request_id for call in self._calls.snapshot()]

    def reset(self) -> None:
        """Forget calls and faults."""
        self._faults.clear()
        self._calls.clear()

    def publish(self, request: Request, data: bytes, file_id: str | None = None) -> str:
        """Store an image and return its absolute URL on this emulator."""
        file_id = self.files.put(data, file_id)
        base = self.base_url or f"{request.scheme}://{request.headers.get('host', '127.0.0.1')}"
        return f"{base.rstrip('/')}/files/{file_id}.png"

    def png(self, width: int, height: int, *parts: object, index: int = 0) -> bytes:
        """The image to answer: one solid colour derived from `parts`, or with `noise` on,
        random pixels (variant `index`, so that the images of one answer differ)."""
        if self.noise:
            return noise_png(width, height, index)
        return solid_png(width, height, colour_for(*parts))

    def code_of(self, error: ProviderError) -> str:
        """The code to send: a fault's override, else the provider's spelling."""
        return error.code or self.provider_code(error.canonical)

    def error_response(self, error: ProviderError) -> Response:
        """The provider's envelope for `error`, with its status and headers."""
        return json_response(self.envelope(error), error.status, error.headers)

    # ----- ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            request = await Request.read(scope, receive, self.max_body_bytes)
        except ClientGone:
            return
        except BodyTooLarge:
            error = ProviderError("invalid_request", "request body is too large", status=413, reason="Body too large")
            await self.error_response(error).send(send)
            return
        response = await self.dispatch(request)
        await response.send(send)

    async def dispatch(self, request: Request) -> Response:
        """Route one request."""
        if request.path.startswith("/_emulator/"):
            return control_response(self._faults, self._calls, self.name, request)
        if request.path.startswith("/files/") and request.method == "GET":
            return self._serve_file(request.path.removeprefix("/files/"))
        methods = self._routes.get(request.path)
        if methods is None:
            return self.error_response(ProviderError("invalid_request", f"no route {request.path}", status=404))
        handler = methods.get(request.method)
        if handler is None:
            message = f"method {request.method} not allowed"
            allow = {"Allow": ", ".join(sorted(methods))}
            return self.error_response(ProviderError("invalid_request", message, status=405, headers=allow))
        return await self._image_request(request, handler)

    async def _image_request(self, request: Request, handler: Handler) -> Response:
        """Log, apply a fault, check the key, then run the handler."""
        call = self._record(request)
        fault = self._faults.take()
        response = await self._apply_fault(call, fault)
        if response is None:
            response = await self._serve(request, handler, call.authorized)
        call.status = response.status
        if fault is not None and fault.reset:
            return TruncatedResponse(response.status, response.body, response.content_type, response.headers)
        return response

    def _record(self, request: Request) -> Call:
        """Log the request, keeping whether the key matched but never the key."""
        authorized = request.headers.get("authorization", "") == f"Bearer {self.api_key}"
        request_id = request.headers.get("x-request-id")
        if not self.record_calls:
            return Call(
                method=request.method,
                path=request.path,
                query=request.query,
                headers={},
                content_type="",
                body_size=len(request.body),
                body=None,
                authorized=authorized,
                time=time.time(),
                request_id=request_id,
            )
        headers = dict(request.headers)
        if "authorization" in headers:
            headers["authorization"] = "<redacted>"
        call = Call(
            method=request.method,
            path=request.path,
            query=request.query,
            headers=headers,
            content_type=request.headers.get("content-type", ""),
            body_size=len(request.body),
            body=summarise_body(request),
            authorized=authorized,
            time=time.time(),
            request_id=request_id,
        )
        self._calls.record(call)
        return call

    async def _apply_fault(self, call: Call, fault: Fault | None) -> Response | None:
        """Answer from this request's fault, or None to serve normally."""
        if fault is None:
            return None
        call.fault = True
        if fault.delay:
            await asyncio.sleep(fault.delay)
        headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
        if fault.body is not None:
            content_type = fault.content_type or "application/json"
            return Response(fault.status or 200, fault.body.encode(), content_type, headers)
        if fault.status is not None:
            message = fault.message or f"emulated fault: HTTP {fault.status}"
            canonical = canonical_for_status(fault.status)
            error = ProviderError(canonical, message, status=fault.status, code=fault.code, headers=headers)
            return self.error_response(error)
        return None

    async def _serve(self, request: Request, handler: Handler, authorized: bool) -> Response:
        """The provider's normal behaviour: key check, then the endpoint."""
        if not authorized:
            error = ProviderError(
                "unauthorized", "Invalid or missing API key", reason="Missing or invalid bearer token"
            )
            return self.error_response(error)
        try:
            return await handler(request)
        except BodyError as exc:
            return self.error_response(ProviderError("invalid_request", str(exc), reason="Malformed request body"))
        except ProviderError as exc:
            return self.error_response(exc)

    def _serve_file(self, name: str) -> Response:
        """`GET /files/{id}.png`: a stored image, or 404."""
        data = self.files.get(name.removesuffix(".png")) if name.endswith(".png") else None
        if data is None:
            return self.error_response(ProviderError("invalid_request", "file not found or expired", status=404))
        return Response(200, data, "image/png")


async def _lifespan(receive: Receive, send: Send) -> None:
    """Answer the ASGI lifespan protocol (nothing to set up)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
