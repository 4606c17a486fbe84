"""The request id reaches the provider: every upstream call carries the client's ``X-Request-ID``,
so provider-side logs can be matched with the gateway's (the emulators record what they saw)."""

from __future__ import annotations

import httpx
import pytest

from tests.emulators import EmulatorServer, solid_png
from tests.integration.conftest import PROVIDERS
from tests.integration.gateway_server import GatewayServer


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_every_call_to_every_provider_carries_the_request_id(
    provider: str, gateway: GatewayServer, emulators: dict[str, EmulatorServer], http: httpx.Client
) -> None:
    """Two images: providers that make one a call are called twice, and both calls carry it."""
    request_id = f"trace-{provider}-0001"
    body = {"model": f"via-{provider}", "prompt": "a lake", "size": "512x512", "n": 2, "response_format": "b64_json"}
    response = http.post(gateway.url + "/v1/images/generations", json=body, headers={"X-Request-ID": request_id})
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == request_id
    seen = emulators[PROVIDERS[provider][0]].emulator.request_ids
    assert seen and seen == [request_id] * len(seen)


def test_a_multipart_edit_carries_it_too(
    gateway: GatewayServer, emulators: dict[str, EmulatorServer], http: httpx.Client
) -> None:
    """Multipart requests take Litestar's path, not the direct one: the id reaches the provider all the same."""
    response = http.post(
        gateway.url + "/v1/images/edits",
        data={"model": "via-nebul", "prompt": "a lake at dusk"},
        files={"image": ("in.png", solid_png(64, 64, (10, 20, 30)), "image/png")},
        headers={"X-Request-ID": "trace-edit-0001"},
    )
    assert response.status_code == 200, response.text
    assert emulators["nebul"].emulator.request_ids == ["trace-edit-0001"]


def test_a_request_id_the_gateway_made_is_sent_as_well(
    gateway: GatewayServer, emulators: dict[str, EmulatorServer], http: httpx.Client
) -> None:
    body = {"model": "via-melious", "prompt": "a lake", "size": "512x512"}
    response = http.post(gateway.url + "/melious/v1/images/generations", json=body)
    assert response.status_code == 200, response.text
    assert emulators["melious"].emulator.request_ids == [response.headers["x-request-id"]]
