"""The dialect routes as Litestar route handlers, against the dispatch that ran before Litestar
(``IMAGE_GATEWAY_DISPATCH=direct``): the same answers, byte for byte, to the same requests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.routes import ASGIRoute
from litestar.testing import AsyncTestClient

from gateway.admission.ratelimit import MemoryLimiter
from gateway.app import DISPATCH_ENV, DirectDispatchApp, create_app, dispatch_from_env
from gateway.request.mounts import DIALECT_ROUTES
from gateway.routing.cooldown import Cooldowns
from gateway.routing.dedup import Dedup
from gateway.routing.router import Router
from schemas import nebulablock
from tests.gateway.fakes import ScriptedAdapter, config

MODELS = [{"name": "m", "targets": [{"provider": "p", "model": "x"}]}]
GENERATE = {"model": "m", "prompt": "a cat", "response_format": "b64_json"}
# (method, path, JSON body or None): answers, refusals, wrong methods, trailing slashes, unknown paths.
REQUESTS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/v1/images/generations", GENERATE),
    ("POST", "/v1/images/generations/", GENERATE),
    ("POST", "/nebul/v1/images/generations", GENERATE),
    ("POST", "/melious/v1/images/generations", {"model": "m"}),  # no prompt: the dialect's 400
    ("POST", "/v1/images/generations", {"model": "nope", "prompt": "a cat"}),  # no such model: 404
    ("GET", "/melious/v1/images/generations", None),  # 405, Allow: POST, Melious's envelope
    ("GET", "/melious/v1/images/generations/", None),
    ("DELETE", "/pomelo/api/v1/flux.1", None),
    ("PUT", nebulablock.SERVERLESS.path, None),  # served for GET and POST
    ("POST", "/melious/v1/images/nothing-here", {}),  # no such route: 404 in Melious's envelope
    ("GET", "/health", None),
]


def _settings(tmp_path: Path) -> Any:
    return config({"p": {}}, MODELS, image_store={"path": str(tmp_path)})


@pytest.fixture
async def clients(tmp_path: Path) -> AsyncIterator[dict[str, AsyncTestClient[Litestar]]]:
    settings = _settings(tmp_path)
    found: dict[str, AsyncTestClient[Litestar]] = {}
    for dispatch in ("litestar", "direct"):
        app = create_app(settings, dispatch=dispatch)
        client = AsyncTestClient(app=app)
        await client.__aenter__()
        gateway = app.state.gateway
        gateway.router = Router(settings, {"p": ScriptedAdapter("p")}, MemoryLimiter(), Cooldowns())
        gateway.dedup = Dedup(settings, gateway.router, gateway.image_store)
        found[dispatch] = client
    try:
        yield found
    finally:
        for client in found.values():
            await client.__aexit__(None, None, None)


def test_every_dialect_path_is_a_litestar_asgi_route(tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path), dispatch="litestar")
    assert type(app) is Litestar
    served = {route.path: route for route in app.routes if isinstance(route, ASGIRoute)}
    assert set(DIALECT_ROUTES) <= set(served)
    assert type(create_app(_settings(tmp_path), dispatch="direct")) is DirectDispatchApp


def test_the_dispatch_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DISPATCH_ENV, raising=False)
    assert dispatch_from_env() == "litestar"
    monkeypatch.setenv(DISPATCH_ENV, "direct")
    assert dispatch_from_env() == "direct"
    monkeypatch.setenv(DISPATCH_ENV, "fast")
    with pytest.raises(ValueError, match=DISPATCH_ENV):
        dispatch_from_env()


@pytest.mark.parametrize(("method", "path", "body"), REQUESTS)
async def test_both_dispatches_answer_alike(
    clients: dict[str, AsyncTestClient[Litestar]], method: str, path: str, body: dict[str, Any] | None
) -> None:
    answers = {}
    for dispatch, client in clients.items():
        response = await client.request(method, path, json=body, headers={"X-Request-ID": f"req-{dispatch}"})
        headers = {name: value for name, value in response.headers.multi_items() if name != "date"}
        if not path.startswith("/melious/v1/images/nothing"):  # a path no handler takes echoes none (both)
            assert response.headers.get_list("x-request-id") == [f"req-{dispatch}"]  # echoed once, never twice
        headers.pop("x-request-id", None)
        answers[dispatch] = (response.status_code, headers, response.content)
    assert answers["litestar"] == answers["direct"]
    status, headers, content = answers["litestar"]
    if method == "GET" and path.startswith("/melious/"):
        assert status == 405 and headers["allow"] == "POST"
    if method in ("PUT", "DELETE"):
        assert status == 405 and headers["allow"] == ("GET, POST" if method == "PUT" else "POST")
    if body == GENERATE:
        assert status == 200 and b'"b64_json"' in content
