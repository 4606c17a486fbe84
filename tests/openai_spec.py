"""OpenAI's published images document (``tests/specs/``), and every root ``/v1`` answer the suite sees held to it.

The document is OpenAPI 3.1, whose schemas are JSON Schema 2020-12: ``jsonschema`` validates
against its components, ``#/components/...`` references resolved through a ``referencing``
registry holding the whole document. ``answer_problems`` checks one answer of a root
``/v1/images/*`` route: a 200 JSON body is an ``ImagesResponse``, a 200 event stream is a
series of ``ImageGenStreamEvent`` (``ImageEditStreamEvent``) events or a final ``error``
event, and any 4xx or 5xx is OpenAI's error envelope.

``watch()`` makes that check on every answer: it wraps the clients of ``httpx`` and
``httpx2`` (the ``openai`` SDK's) so that the body of each answer from a gateway under
test (``serving``: the suite's gateway servers register their base URL; Litestar's test
client is always one) to one of those paths is checked once it has been read to its end.
What breaks the document is kept in ``violations`` for the suite's conftest to fail the
test with; the client itself sees the answer unchanged.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

__all__ = [
    "PATHS",
    "SPEC_FILE",
    "answer_problems",
    "document",
    "problems",
    "retired",
    "seen",
    "serving",
    "violations",
    "watch",
]

SPEC_FILE = Path(__file__).parent / "specs" / "openai-images-openapi.yaml"
_URI = "urn:openai-images-openapi"

# The root routes the document defines, and the event type prefix of each one that streams.
PATHS: dict[str, str | None] = {
    "/v1/images/generations": "image_generation",
    "/v1/images/edits": "image_edit",
    "/v1/images/variations": None,
}
_STREAM_EVENTS = {"image_generation": "ImageGenStreamEvent", "image_edit": "ImageEditStreamEvent"}

# OpenAI's error envelope: the ``ErrorResponse`` and ``Error`` components of the full document, which
# the images subset leaves out (the ``openai`` SDK's ``ErrorObject`` reads the same four fields).
ERROR_RESPONSE: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["type", "message", "param", "code"],
            "properties": {
                "code": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                "message": {"type": "string"},
                "param": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                "type": {"type": "string"},
            },
        }
    },
}
# A failure after a stream began: ``{"type": "error", "error": {...}}`` (the SDK raises it as APIError).
ERROR_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["type", "error"],
    "properties": {"type": {"const": "error"}, "error": ERROR_RESPONSE["properties"]["error"]},
}


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI document, parsed once."""
    loaded = yaml.safe_load(SPEC_FILE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


@functools.cache
def _registry() -> Registry[Any]:
    return Registry().with_resource(_URI, Resource.from_contents(document(), default_specification=DRAFT202012))


@functools.cache
def _validator(component: str) -> Draft202012Validator:
    if component == "ErrorResponse":
        schema: dict[str, Any] = ERROR_RESPONSE
    elif component == "ErrorEvent":
        schema = ERROR_EVENT
    else:
        assert component in document()["components"]["schemas"], component
        schema = {"$ref": f"{_URI}#/components/schemas/{component}"}
    return Draft202012Validator(schema, registry=_registry())


def problems(component: str, instance: Any) -> list[str]:
    """How ``instance`` breaks the document's schema ``component`` (``ErrorResponse`` too); empty when it holds."""
    return [
        f"{component} at {error.json_path}: {error.message[:300]}"
        for error in _validator(component).iter_errors(instance)
    ]


def answer_problems(path: str, status: int, content_type: str, body: bytes) -> list[str]:
    """How one answer of the root route ``path`` breaks OpenAI's document; empty when it holds."""
    if 200 < status < 300:
        return []  # 202 (Prefer: respond-async) and the like: the gateway's own extensions
    if status == 200 and content_type.startswith("text/event-stream"):
        return _stream_problems(PATHS[path], body)
    try:
        answer = json.loads(body)
    except ValueError:
        return [f"a {status} answer that is not JSON: {body[:200]!r}"]
    if status == 200:
        return problems("ImagesResponse", answer)
    if status >= 400:
        return problems("ErrorResponse", answer)
    return []


def _stream_problems(prefix: str | None, body: bytes) -> list[str]:
    if prefix is None:
        return ["an event stream from a route that does not stream"]
    found: list[str] = []
    types: list[str] = []
    for block in body.decode("utf-8").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if not fields:
            continue
        data = json.loads(fields.get("data", "null"))
        kind = data.get("type") if isinstance(data, dict) else None
        types.append(str(kind))
        if fields.get("event") != kind:
            found.append(f"event {fields.get('event')!r} carries data of type {kind!r}")
        if kind == "error":
            found += problems("ErrorEvent", data)
        elif not str(kind).startswith(prefix + "."):
            found.append(f"an event of type {kind!r} on a route whose events are {prefix}.*")
        else:
            found += problems(_STREAM_EVENTS[prefix], data)
    if not types or types[-1] not in (f"{prefix}.completed", "error"):
        found.append(f"a stream that does not end with {prefix}.completed or error: {types}")
    return found


# --- every answer the suite sees ---

_origins: set[str] = set()
violations: list[str] = []
checked = [0]  # answers checked so far, for the test that the watch sees them
TEST_CLIENT_HOST = "testserver.local"  # Litestar's TestClient: always the gateway's own app


def serving(base_url: str) -> None:
    """Hold the answers of the gateway at ``base_url`` to the document from now on."""
    _origins.add(base_url.rstrip("/"))


def retired(base_url: str) -> None:
    """Stop watching ``base_url``: its gateway stopped, and another server may get its port."""
    _origins.discard(base_url.rstrip("/"))


def _watched(url: Any) -> str | None:
    """The root route a request URL is for, when it is a gateway's under test; else None."""
    path = url.path
    if path not in PATHS:
        return None
    origin = f"{url.scheme}://{url.host}:{url.port}" if url.port else f"{url.scheme}://{url.host}"
    return path if url.host == TEST_CLIENT_HOST or origin in _origins else None


def seen(url: str, method: str, status: int, content_type: str, body: bytes) -> None:
    """Check an answer read by a client ``watch`` does not wrap (urllib, a browser): as ``watch`` would."""
    path = _watched(_URL.from_str(url))
    if path is not None:
        checked[0] += 1
        for problem in answer_problems(path, status, content_type, body):
            violations.append(f"{method} {path} answered {status}: {problem}")


class _URL(NamedTuple):
    scheme: str
    host: str
    port: int | None
    path: str

    @classmethod
    def from_str(cls, url: str) -> _URL:
        parts = urlsplit(url)
        return cls(parts.scheme, parts.hostname or "", parts.port, parts.path)


def _checker(path: str, response: Any) -> Callable[[bytes], None]:
    def check(body: bytes) -> None:
        checked[0] += 1
        content_type = response.headers.get("content-type", "")
        for problem in answer_problems(path, response.status_code, content_type, body):
            violations.append(f"{response.request.method} {path} answered {response.status_code}: {problem}")

    return check


def _tee_classes(sync_base: type, async_base: type) -> tuple[type, type]:
    """Streams that pass each chunk on and check the whole body once it has been read to its end."""

    class Tee(sync_base):  # type: ignore[misc, valid-type]
        def __init__(self, inner: Any, check: Callable[[bytes], None]) -> None:
            self._inner, self._check = inner, check

        def __iter__(self) -> Iterator[bytes]:
            chunks: list[bytes] = []
            for chunk in self._inner:
                chunks.append(chunk)
                yield chunk
            self._check(b"".join(chunks))

        def close(self) -> None:
            self._inner.close()

    class AsyncTee(async_base):  # type: ignore[misc, valid-type]
        def __init__(self, inner: Any, check: Callable[[bytes], None]) -> None:
            self._inner, self._check = inner, check

        async def __aiter__(self) -> AsyncIterator[bytes]:
            chunks: list[bytes] = []
            async for chunk in self._inner:
                chunks.append(chunk)
                yield chunk
            self._check(b"".join(chunks))

        async def aclose(self) -> None:
            await self._inner.aclose()

    return Tee, AsyncTee


def _wrap(module: Any) -> list[tuple[Any, str, Any]]:
    """Wrap ``module``'s clients (httpx or httpx2); the originals, to put back."""
    tee, async_tee = _tee_classes(module.SyncByteStream, module.AsyncByteStream)
    client, async_client = module.Client, module.AsyncClient
    send, async_send = client._send_single_request, async_client._send_single_request

    def follow(response: Any, request: Any, kind: type) -> Any:
        path = _watched(request.url)
        if path is None:
            return response
        check = _checker(path, response)
        if hasattr(response, "_content"):  # a transport that answered the whole body at once
            check(response._content)
        else:
            response.stream._stream = kind(response.stream._stream, check)
        return response

    def sending(self: Any, request: Any) -> Any:
        return follow(send(self, request), request, tee)

    async def async_sending(self: Any, request: Any) -> Any:
        return follow(await async_send(self, request), request, async_tee)

    client._send_single_request = sending
    async_client._send_single_request = async_sending
    return [(client, "_send_single_request", send), (async_client, "_send_single_request", async_send)]


def watch() -> Callable[[], None]:
    """Check every answer of a watched gateway from now on (httpx and httpx2); the function that stops it."""
    import httpx
    import httpx2

    originals = _wrap(httpx) + _wrap(httpx2)

    def stop() -> None:
        for owner, name, original in originals:
            setattr(owner, name, original)

    return stop
