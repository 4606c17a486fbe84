"""gateway/request/pipeline.py: what every dialect request gets, whatever its dialect, answered in process.

The app is the real one (``create_app``) driven over ASGI by Litestar's test client, or by hand where a
test needs a client that hangs up; behind the router is a scripted adapter (tests/gateway/fakes.py).
Per request: the request id (taken or made, echoed), the method check (405 with ``Allow``), the body
limit (413), the 499 for a client that left, and every failure in the client's own envelope, never a 500
with a traceback.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from adapters.base import CallOptions
from gateway.admission.ratelimit import MemoryLimiter
from gateway.app import create_app
from gateway.routing.cooldown import Cooldowns
from gateway.routing.router import Router
from schemas.canonical import ErrorCode, GatewayError, ImageRequest, ImageResult
from tests.gateway.fakes import ScriptedAdapter, config

MAX_BODY = 4096
GENERATE = {"model": "m", "prompt": "a lighthouse", "size": "512x512", "response_format": "b64_json"}


class Exploding(ScriptedAdapter):
    """An adapter with a bug: it raises something no one translated."""

    async def generate(self, request: ImageRequest, options: CallOptions) -> ImageResult:
        raise RuntimeError("a bug with a secret sk-live-0123456789 in it")


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[AsyncTestClient[Any], Any, ScriptedAdapter]]:
    settings = config(
        {"p": {}, "bug": {}},
        [
            {"name": "m", "targets": [{"provider": "p", "model": "x"}]},
            {"name": "buggy", "targets": [{"provider": "bug", "model": "x"}]},
        ],
        server={"max_body_bytes": MAX_BODY},
        image_store={"path": str(tmp_path)},
    )
    app = create_app(settings)
    adapter = ScriptedAdapter("p")
    async with AsyncTestClient(app=app) as client:
        adapters = {"p": adapter, "bug": Exploding("bug")}
        app.state.gateway.router = Router(settings, adapters, MemoryLimiter(), Cooldowns())
        yield client, app, adapter


async def test_an_answer_carries_its_request_id_and_its_length(served: Any) -> None:
    client, _, adapter = served
    given = await client.post("/v1/images/generations", json=GENERATE, headers={"X-Request-ID": "trace-me-42"})
    assert given.status_code == 200, given.text
    assert given.headers["x-request-id"] == "trace-me-42"
    assert given.headers["content-type"] == "application/json"
    assert int(given.headers["content-length"]) == len(given.content)
    assert given.json()["data"][0]["b64_json"] == "aW1n"
    made = await client.post("/nebul/v1/images/generations", json=GENERATE)
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"]), made.headers
    assert len(adapter.calls) == 2


async def test_a_path_with_one_trailing_slash_is_the_same_route(served: Any) -> None:
    client, _, _ = served
    answer = await client.post("/melious/v1/images/generations/", json=GENERATE)
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize(
    ("path", "allow", "code"),
    [
        ("/melious/v1/images/generations", "POST", "VALIDATION_INVALID_VALUE"),
        ("/v1/images/edits", "POST", "invalid_value"),
        ("/api/v1/flux.1", "POST", "invalid_request"),
    ],
)
async def test_a_wrong_method_is_a_405_naming_the_allowed_ones_in_the_dialect(
    served: Any, path: str, allow: str, code: str
) -> None:
    client, _, adapter = served
    answer = await client.put(path, json=GENERATE)
    assert answer.status_code == 405, answer.text
    assert answer.headers["allow"] == allow
    assert answer.json()["error"]["code"] == code
    assert "x-request-id" in answer.headers
    assert adapter.calls == []


async def test_a_route_taking_get_too_says_so_in_allow(served: Any) -> None:
    client, _, _ = served
    answer = await client.delete("/api/v1/images/generation")
    assert answer.status_code == 405 and answer.headers["allow"] == "GET, POST"


async def test_a_body_over_the_limit_is_a_413_in_the_dialect_without_a_call(served: Any) -> None:
    client, _, adapter = served
    body = {**GENERATE, "prompt": "x" * MAX_BODY}
    answer = await client.post("/pomelo/api/v1/midjourney/generate", json=body)
    assert answer.status_code == 413, answer.text
    assert (
        answer.json()["error"]
        == {
            "code": "invalid_request",
            "message": f"request body is larger than {MAX_BODY} bytes",
        }
        or answer.json()["error"]["code"] == "invalid_request"
    )
    assert adapter.calls == []


async def test_a_providers_failure_is_answered_in_the_clients_envelope(served: Any) -> None:
    client, _, adapter = served
    adapter.outcomes = [GatewayError(ErrorCode.CONTENT_POLICY, "no", public=True)]
    answer = await client.post("/melious/v1/images/generations", json={**GENERATE, "size": "512x512"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "POLICY_CONTENT_VIOLATION"


async def test_an_untranslated_exception_is_an_internal_error_without_its_text(served: Any) -> None:
    client, _, _ = served
    answer = await client.post("/v1/images/generations", json={**GENERATE, "model": "buggy"})
    assert answer.status_code == 500, answer.text
    error = answer.json()["error"]
    assert error["code"] == "internal_error" and error["type"] == "server_error"
    assert "sk-live" not in answer.text and "Traceback" not in answer.text and "RuntimeError" not in answer.text


async def test_a_client_that_leaves_mid_body_gets_a_499_and_nothing_is_called(served: Any) -> None:
    _, app, adapter = served
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": b'{"model": "m",', "more_body": True}, {"type": "http.disconnect"}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/images/generations",
        "raw_path": b"/v1/images/generations",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"host", b"testserver")],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
        "state": {},
    }
    await app(scope, receive, send)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 499
    assert adapter.calls == []
