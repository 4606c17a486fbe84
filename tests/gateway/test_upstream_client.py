"""The shared upstream client keeps no cookies: what a provider sets for one client never reaches the next."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.app import build_http_client
from tests.servers import ThreadedServer


async def cookie_setter(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Sets a cookie on every answer, and answers with the Cookie header it was sent (empty if none)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    sent = dict(scope["headers"]).get(b"cookie", b"")
    headers = [(b"content-type", b"text/plain"), (b"set-cookie", b"session=tenant-a; Path=/")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": sent})


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_no_cookie_is_sent_back(transport: str) -> None:
    with ThreadedServer(cookie_setter) as server:
        client = build_http_client(transport)
        try:
            first = await client.get(server.url + "/")
            assert first.headers["set-cookie"].startswith("session=tenant-a")
            second = await client.get(server.url + "/")
            assert second.status_code == 200 and second.content == b""
        finally:
            await client.aclose()
