"""The admin API and the console's access rules, over real HTTP (the browser tests are in test_browser.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest

from gateway.config import ConfigError
from gateway.console.admin import EVENTS_PER_STREAM
from tests.console.conftest import ADMIN_KEY, CLIENT_KEY, ConsoleGateway, console_config
from tests.emulators import EmulatorServer
from tests.integration.gateway_server import GatewayServer

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CLIENT = {"Authorization": f"Bearer {CLIENT_KEY}"}
MODULES = ("main", "api", "status", "playground")
TINY = {"model": "tiny", "prompt": "a lighthouse", "size": "64x64"}


@pytest.fixture(autouse=True)
def _fresh(fresh_emulators: dict[str, EmulatorServer]) -> None:
    """No faults queued at the emulators."""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


def started(emulators: dict[str, EmulatorServer], store: Path, **sections: object) -> GatewayServer:
    return ConsoleGateway(console_config(emulators, store, **sections)).start()


@pytest.fixture(scope="module")
def gateway(emulators: dict[str, EmulatorServer], store: Path, model_dir: Path) -> Iterator[GatewayServer]:
    server = started(emulators, store)
    yield server
    server.stop()


def test_the_admin_api_wants_an_admin_key(gateway: GatewayServer, http: httpx.Client) -> None:
    missing = http.get(gateway.url + "/admin/api/status")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert http.get(gateway.url + "/admin/api/status", headers={"Authorization": "Bearer wrong"}).status_code == 401
    # A client's key is not an admin key.
    assert http.get(gateway.url + "/admin/api/models", headers=CLIENT).status_code == 401
    answer = http.get(gateway.url + "/admin/api/status", headers=ADMIN)
    assert answer.status_code == 200, answer.text
    assert answer.json()["access"] == "admin_key"


def test_the_page_holds_no_data_and_is_served_with_its_own_files(gateway: GatewayServer, http: httpx.Client) -> None:
    page = http.get(gateway.url + "/console")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "tiny" not in page.text and "melious" not in page.text  # models and providers come from the API
    assert 'href="/console/assets/console.css"' in page.text and 'src="/console/assets/js/main.js"' in page.text
    for asset, media_type in [("console.css", "text/css"), *((f"js/{m}.js", "javascript") for m in MODULES)]:
        fetched = http.get(f"{gateway.url}/console/assets/{asset}")
        assert fetched.status_code == 200, asset
        assert media_type in fetched.headers["content-type"], asset
    assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere
    # The page is served at one address, with its headers: never as a plain file beside its assets.
    assert http.get(gateway.url + "/console/assets/index.html").status_code == 404


def test_models_and_targets_in_order(gateway: GatewayServer, http: httpx.Client) -> None:
    answer = http.get(gateway.url + "/admin/api/models", headers=ADMIN).json()
    assert answer["auth_open"] is False
    assert answer["models"] == [
        {"name": "tiny", "aliases": [], "targets": [{"provider": "local", "model": "tiny"}]},
        {"name": "via-melious", "aliases": [], "targets": [{"provider": "melious", "model": "flux-schnell"}]},
    ]


def test_a_failing_provider_cools_down_with_its_error_rate(
    gateway: GatewayServer, http: httpx.Client, emulators: dict[str, EmulatorServer]
) -> None:
    melious = emulators["melious"]
    ok = http.post(
        gateway.url + "/v1/images/generations", headers=CLIENT, json={"model": "via-melious", "prompt": "a cat"}
    )
    assert ok.status_code == 200, ok.text
    queued = http.post(melious.base_url + "/_emulator/faults", json={"status": 500, "times": None})
    assert queued.status_code == 200
    failed = http.post(
        gateway.url + "/v1/images/generations", headers=CLIENT, json={"model": "via-melious", "prompt": "a cat"}
    )
    assert failed.status_code >= 500
    status = http.get(gateway.url + "/admin/api/status", headers=ADMIN).json()
    providers = {provider["name"]: provider for provider in status["providers"]}
    alone = http.get(gateway.url + "/admin/api/providers", headers=ADMIN).json()
    assert {p["name"]: p["state"] for p in alone} == {name: p["state"] for name, p in providers.items()}
    melious_now = providers["melious"]
    assert melious_now["state"] == "cooling_down"
    assert melious_now["cooling_until"] is not None and melious_now["cooling_remaining_s"] > 0
    assert melious_now["recent"]["calls"] >= 2
    assert melious_now["recent"]["errors"] >= 1
    assert 0 < melious_now["recent"]["error_rate"] < 1
    assert melious_now["recent"]["p50_ms"] > 0 and melious_now["recent"]["p95_ms"] >= melious_now["recent"]["p50_ms"]
    assert providers["local"]["state"] == "up"


def test_limits_show_what_each_key_used(gateway: GatewayServer, http: httpx.Client) -> None:
    def alice() -> dict[str, object]:
        items = http.get(gateway.url + "/admin/api/limits", headers=ADMIN).json()["items"]
        (found,) = [item for item in items if item["scope"] == "key" and item["name"] == "alice"]
        return found

    before = alice()
    assert before["limit"] == 50 and before["unit"] == "requests" and before["period_s"] == 86400
    for _ in range(3):
        http.get(gateway.url + "/admin/api/models", headers=ADMIN)  # the admin API charges nothing
        answer = http.post(gateway.url + "/v1/images/generations", headers=CLIENT, json=TINY)
        assert answer.status_code == 200, answer.text
    after = alice()
    assert isinstance(before["used"], int) and after["used"] == before["used"] + 3


def test_budgets_show_what_each_key_spent(gateway: GatewayServer, http: httpx.Client) -> None:
    def alice() -> dict[str, object]:
        answer = http.get(gateway.url + "/admin/api/budgets", headers=ADMIN).json()
        assert answer["available"] is True
        (found,) = answer["items"]
        return found

    before = alice()
    assert before["key"] == "alice" and before["period"] == "month" and before["currency"] == "EUR"
    assert before["amount"] == 5.0 and str(before["renews_at"]).endswith("T00:00:00Z")
    answer = http.post(gateway.url + "/v1/images/generations", headers=CLIENT, json={**TINY, "n": 2})
    assert answer.status_code == 200, answer.text
    assert answer.headers["X-Gateway-Cost"] == "0.5000 EUR"
    after = alice()
    assert isinstance(before["spent"], float) and after["spent"] == before["spent"] + 0.5


def test_the_local_backend_reports_its_engine(gateway: GatewayServer, http: httpx.Client) -> None:
    answer = http.post(gateway.url + "/v1/images/generations", headers=CLIENT, json={**TINY, "n": 2})
    assert answer.status_code == 200, answer.text
    (local,) = http.get(gateway.url + "/admin/api/local", headers=ADMIN).json()
    assert local["provider"] == "local" and local["remote"] is False and local["started"] is True
    assert local["device"] == "cpu"
    assert local["images_generated"] >= 2 and local["batches"] >= 1
    assert sum(local["batch_sizes"].values()) == local["batches"]
    assert local["models"] == {"tiny": "ready"}


def test_jobs_by_status(gateway: GatewayServer, http: httpx.Client) -> None:
    before = http.get(gateway.url + "/admin/api/jobs", headers=ADMIN).json()
    assert before["available"] is True and before["store"] == "memory"
    submitted = http.post(
        gateway.url + "/v1/images/generations",
        headers={**CLIENT, "Prefer": "respond-async, wait=60"},
        json=TINY,
    )
    assert submitted.status_code == 200, submitted.text  # done within the wait: the plain answer
    after = http.get(gateway.url + "/admin/api/jobs", headers=ADMIN).json()
    for status in ("queued", "running", "succeeded"):
        assert after["by_status_here"].get(status, 0) == before["by_status_here"].get(status, 0) + 1, after
    assert after["waiting"] == 0 and after["running_here"] == 0


def test_status_events_arrive_as_server_sent_events(gateway: GatewayServer, capfd: pytest.CaptureFixture[str]) -> None:
    with (
        httpx.Client(timeout=30) as client,
        client.stream("GET", gateway.url + "/admin/api/status/events", headers=ADMIN) as stream,
    ):
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        events: list[dict[str, object]] = []
        event = ""
        for line in stream.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                assert event == "status"
                events.append(msgspec.json.decode(line.removeprefix("data: ")))
    # The stream ends by itself after a few events (the page reconnects): a shutdown never waits on it.
    assert len(events) == EVENTS_PER_STREAM
    assert all(snapshot["access"] == "admin_key" for snapshot in events)
    assert [p["name"] for p in events[1]["providers"]] == ["local", "melious"]  # type: ignore[index]
    with httpx.Client(timeout=30) as client:
        assert client.get(gateway.url + "/admin/api/status/events").status_code == 401
    out, err = capfd.readouterr()
    assert ADMIN_KEY not in out + err  # the admin key is never logged


def test_a_bad_admin_key_entry_is_named(emulators: dict[str, EmulatorServer], store: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        console_config(emulators, store, auth={"admin_keys": [{"name": "ops", "hash": "plain-text"}]})
    assert "$.auth.admin_keys[0].hash" in str(caught.value)
    twice = [{"name": "ops", "hash": "sha256:" + "0" * 64}] * 2
    with pytest.raises(ConfigError, match=r"two admin keys .* share a name"):
        console_config(emulators, store, auth={"admin_keys": twice})


def test_documented_in_openapi(gateway: GatewayServer, http: httpx.Client) -> None:
    document = http.get(gateway.url + "/docs/openapi.json").json()
    for path in ("status", "status/events", "providers", "models", "limits", "local", "jobs"):
        operation = document["paths"][f"/admin/api/{path}"]["get"]
        assert operation["tags"] == ["admin"], path
        assert operation.get("description"), path
    assert "/console" not in document["paths"]
    schemas = document["components"]["schemas"]
    status = document["paths"]["/admin/api/status"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert status["$ref"].endswith("/StatusAnswer")
    assert {"providers", "models", "limits", "local", "jobs"} <= set(schemas["StatusAnswer"]["properties"])
    assert schemas["ProviderStatus"]["properties"]["state"]["enum"] == ["up", "cooling_down"]


def test_without_admin_keys_only_a_loopback_gateway_serves_it(
    emulators: dict[str, EmulatorServer], store: Path, http: httpx.Client
) -> None:
    auth = {"keys": [], "admin_keys": []}
    loopback = started(emulators, store, auth=auth, server={"host": "127.0.0.1"})
    try:
        status = http.get(loopback.url + "/admin/api/status")
        assert status.status_code == 200
        assert status.json()["access"] == "loopback"
        assert status.json()["limits"]["auth_open"] is True
        assert http.get(loopback.url + "/console").status_code == 200
        port = loopback.url.rsplit(":", 1)[1]
        for host in ("localhost", f"localhost:{port}", f"[::1]:{port}", "127.0.0.2", "app.localhost"):
            assert http.get(loopback.url + "/admin/api/status", headers={"Host": host}).status_code == 200, host
        # DNS rebinding: a page elsewhere makes the browser call 127.0.0.1 under its own name, which Host carries.
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "[2001:db8::1]"):
            for path in ("/console", "/console/assets/js/main.js", "/admin/api/status"):
                assert http.get(loopback.url + path, headers={"Host": host}).status_code == 404, (host, path)
    finally:
        loopback.stop()
    exposed = started(emulators, store, auth=auth, server={"host": "0.0.0.0"})
    try:
        for path in ("/console", "/console/assets/js/main.js", "/admin/api/status", "/admin/api/status/events"):
            assert http.get(exposed.url + path).status_code == 404, path
    finally:
        exposed.stop()


def test_a_recent_request_by_its_id(gateway: GatewayServer, http: httpx.Client) -> None:
    """A streamed answer's provider and cost are read back by its request id (its headers could not say)."""
    with http.stream(
        "POST", gateway.url + "/v1/images/generations", headers=CLIENT, json={**TINY, "stream": True}
    ) as answer:
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
        assert "X-Gateway-Provider" not in answer.headers
        request_id = answer.headers["X-Request-ID"]
        assert b"image_generation.completed" in answer.read()
    found = http.get(gateway.url + f"/admin/api/requests/{request_id}", headers=ADMIN)
    for _ in range(20):  # written as the stream ends, just after its last byte
        if found.status_code != 404:
            break
        time.sleep(0.1)
        found = http.get(gateway.url + f"/admin/api/requests/{request_id}", headers=ADMIN)
    assert found.status_code == 200, found.text
    record = found.json()
    assert record["provider"] == "local" and record["model"] == "tiny" and record["outcome"] == "ok"
    assert record["images"] == 1 and record["dialect"] == "openai"
    assert http.get(gateway.url + "/admin/api/requests/nope", headers=ADMIN).status_code == 404
    assert http.get(gateway.url + f"/admin/api/requests/{request_id}", headers=CLIENT).status_code == 401
