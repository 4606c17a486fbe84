"""The direct path (gateway/direct.py) answers exactly as Litestar's route handlers do.

Two gateways on one config, in front of the same emulators: one serves the JSON dialect
endpoints on the direct path, the other (``create_app(direct=False)``) leaves every route
to Litestar. Every request below goes to both; what a client can see must match.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from litestar import Request

from gateway.app import GatewayApp, create_app
from gateway.auth import hash_key
from gateway.direct import DIRECT_ROUTES, ScopeInbound
from tests.emulators import EmulatorServer
from tests.integration.conftest import MAX_BODY_BYTES, PROVIDERS, provider_entries
from tests.integration.gateway_server import gateway_config
from tests.servers import ThreadedServer

KEY = "direct-test-key"
# Headers whose values differ between two answers to the same request for reasons of their own.
VOLATILE = {"date", "x-request-id", "ratelimit-reset", "x-ratelimit-reset-requests", "x-ratelimit-reset-images"}

CASES: list[tuple[str, dict[str, Any]]] = [
    ("/melious/v1/images/generations", {"model": "via-melious", "prompt": "a cat", "seed": 7}),
    ("/nebul/v1/images/generations", {"model": "via-nebul", "prompt": "a cat", "n": 2}),
    ("/v1/images/generations", {"model": "via-melious", "prompt": "a cat", "response_format": "url"}),
    ("/pomelo/api/v1/flux.1", {"prompt": "a cat"}),
    ("/pomelo/api/v1/midjourney/generate", {"model": "via-melious", "prompt": "a cat"}),
    ("/nebulablock/api/v1/images/generation", {"model": "via-nebulablock-serverless", "prompt": "a cat"}),
    ("/nebulablock/v1/images/generate", {"model": "via-nebulablock-v1", "prompt": "a cat"}),
    ("/melious/v1/images/generations", {"model": "nowhere", "prompt": "a cat"}),
    ("/v1/images/generations", {"model": "via-melious", "prompt": "a cat", "n": 99}),
    ("/nebulablock/v1/images/generate", {"model": "via-nebulablock-v1"}),
]


@pytest.fixture(scope="module")
def pair(emulators: dict[str, EmulatorServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    models = [
        {"name": f"via-{name}", "targets": [{"provider": name, "model": model}]}
        for name, (_, _, model) in PROVIDERS.items()
    ]
    models.append({"name": "flux.1", "targets": [{"provider": "pomelo-flux", "model": "flux.1"}]})
    config = gateway_config(
        provider_entries(emulators),
        models,
        tmp_path_factory.mktemp("store"),
        server={"max_body_bytes": MAX_BODY_BYTES},
        auth={"keys": [{"name": "direct", "hash": hash_key(KEY)}]},
        image_store={"path": str(tmp_path_factory.mktemp("images")), "secret": "same-for-both"},
    )
    direct, routed = create_app(config), create_app(config, direct=False)
    assert isinstance(direct, GatewayApp) and not isinstance(routed, GatewayApp)
    with ThreadedServer(direct) as one, ThreadedServer(routed) as other:
        yield [one.url, other.url]


def both(http: httpx.Client, urls: list[str], path: str, **options: Any) -> list[httpx.Response]:
    return [http.post(url + path, **options) for url in urls]


def visible(response: httpx.Response) -> tuple[int, dict[str, str]]:
    """Status and headers; a success's length varies with its timings, so only its presence counts."""
    headers = {name: value for name, value in response.headers.items() if name not in VOLATILE}
    if response.status_code == 200:
        headers["content-length"] = str(int(headers["content-length"]) > 0)
    return response.status_code, headers


def shape(value: Any) -> Any:
    """A JSON answer with its volatile values (times, ids, image bytes, URLs) replaced by their types."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return type(value).__name__ if isinstance(value, (str, int, float)) and not isinstance(value, bool) else value


def test_json_dialect_routes_are_the_direct_ones() -> None:
    assert set(DIRECT_ROUTES) >= {path for path, _ in CASES}
    assert not any(path.endswith(("/edits", "/variations")) for path in DIRECT_ROUTES)  # multipart: Litestar's


@pytest.mark.parametrize(("path", "body"), CASES)
def test_same_answer_on_both_paths(path: str, body: dict[str, Any], pair: list[str], http: httpx.Client) -> None:
    direct, routed = both(http, pair, path, json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert visible(direct) == visible(routed), (direct.text, routed.text)
    if direct.status_code == 200:
        assert shape(direct.json()) == shape(routed.json())
    else:  # an error's message names nothing volatile: the whole envelope matches
        assert direct.json() == routed.json()


@pytest.mark.parametrize(
    ("headers", "content"),
    [
        ({}, b'{"model": "via-melious", "prompt": "a cat"}'),  # no key
        ({"Authorization": "Basic abc"}, b'{"model": "via-melious", "prompt": "a cat"}'),
        ({"Authorization": f"Bearer {KEY}"}, b"{not json"),
        ({"Authorization": f"Bearer {KEY}"}, b""),
        ({"Authorization": f"Bearer {KEY}"}, b"x" * (MAX_BODY_BYTES + 1)),
    ],
)
def test_same_refusal_on_both_paths(
    headers: dict[str, str], content: bytes, pair: list[str], http: httpx.Client
) -> None:
    path = "/melious/v1/images/generations"
    direct, routed = both(http, pair, path, content=content, headers={"Content-Type": "application/json", **headers})
    assert direct.status_code in (400, 401, 413)
    assert visible(direct) == visible(routed)
    assert direct.json() == routed.json()


def test_request_id_is_echoed_or_made(pair: list[str], http: httpx.Client) -> None:
    body = {"model": "via-melious", "prompt": "a cat"}
    auth = {"Authorization": f"Bearer {KEY}"}
    given = both(http, pair, "/melious/v1/images/generations", json=body, headers={**auth, "X-Request-ID": "abc-1"})
    assert [response.headers["x-request-id"] for response in given] == ["abc-1", "abc-1"]
    made = both(http, pair, "/melious/v1/images/generations", json=body, headers={**auth, "X-Request-ID": "no good"})
    assert all(len(response.headers["x-request-id"]) == 32 for response in made)


@pytest.mark.parametrize(
    "scope",
    [
        {"scheme": "http", "server": ("127.0.0.1", 8080), "headers": [(b"host", b"gw.example:8443")]},
        {
            "scheme": "https",
            "server": ("10.0.0.5", 443),
            "headers": [(b"host", b"images.example")],
            "root_path": "/igw",
        },
        {"scheme": "http", "server": ("127.0.0.1", 8080), "headers": []},
    ],
)
def test_base_url_is_litestars(scope: dict[str, Any]) -> None:
    """Where stored images are served from (``response_format: url``): the same on both paths."""
    full = {"type": "http", "method": "POST", "path": "/v1/images/generations", "query_string": b"", **scope}
    ours = ScopeInbound(full, None, 1024).base_url()  # type: ignore[arg-type]
    assert ours == str(Request(full).base_url).rstrip("/")  # type: ignore[arg-type]


def test_other_methods_and_paths_stay_with_litestar(pair: list[str], http: httpx.Client) -> None:
    for method, path in [("GET", "/melious/v1/images/generations"), ("POST", "/melious/v1/images/nowhere")]:
        direct, routed = (http.request(method, url + path) for url in pair)
        assert direct.status_code == routed.status_code and direct.status_code in (404, 405)
        assert direct.json() == routed.json()
