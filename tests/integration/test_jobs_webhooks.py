"""A job's end told by a signed webhook (gateway/jobs/webhooks.py) to a real loopback receiver, verified with the
Standard Webhooks reference verifier, the deliveries recorded on the job; a bad X-Webhook-URL refused before 202."""

from __future__ import annotations

import base64
import secrets
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from gateway.admission.auth import hash_key
from tests.emulators import EmulatorServer, Fault
from tests.integration.conftest import start_gateway
from tests.integration.gateway_server import GatewayServer
from tests.integration.test_jobs import DIALECTS, MODELS, accepted, ended

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
KEYS = {"alice": "sk-alice-hooks-0123456789", "bob": "sk-bob-hooks-0123456789"}


class Receiver:
    """A real HTTP server on loopback: records each POST, answers the scripted statuses in turn (then 200)."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, dict[str, str]]] = []
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.received.append((body, {name.lower(): value for name, value in self.headers.items()}))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self) -> list[dict[str, Any]]:
        """Every delivery, verified with the key's secret (raises on a bad signature)."""
        return [Webhook(SECRET).verify(body, headers) for body, headers in self.received]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def hooks_gateway(
    emulators: dict[str, EmulatorServer], tmp_path_factory: pytest.TempPathFactory, receiver: Receiver
) -> Iterator[GatewayServer]:
    alice_hooks = {"secret": SECRET, "allow_hosts": ["127.0.0.1"], "allow_private": True, "allow_http": True}
    auth = {
        "keys": [
            {"name": "alice", "hash": hash_key(KEYS["alice"]), "webhooks": alice_hooks},
            {"name": "bob", "hash": hash_key(KEYS["bob"])},
        ]
    }
    server = start_gateway(
        emulators,
        MODELS,
        tmp_path_factory.mktemp("store"),
        auth=auth,
        webhooks={"attempts": 4, "backoff_initial_s": 0.05, "backoff_max_s": 0.1, "timeout_s": 5},
    )
    yield server
    server.stop()


def headers(receiver: Receiver, who: str = "alice", url: str | None = None) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {KEYS[who]}",
        "Prefer": "respond-async",
        "X-Webhook-URL": receiver.url if url is None else url,
    }


def told(http: httpx.Client, server: GatewayServer, job_id: str) -> dict[str, Any]:
    """The job once it has ended and its webhook deliveries are recorded."""
    deadline = time.monotonic() + 30
    while True:
        job: dict[str, Any] = http.get(
            f"{server.url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {KEYS['alice']}"}
        ).json()
        if ended(job) and job.get("webhooks"):
            return job
        assert time.monotonic() < deadline, f"never told: {job}"
        time.sleep(0.05)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_jobs_end_is_told_by_a_signed_webhook(
    hooks_gateway: GatewayServer, http: httpx.Client, receiver: Receiver, dialect: str
) -> None:
    receiver.received.clear()
    path, body, _ = DIALECTS[dialect]
    job_id = accepted(http.post(hooks_gateway.url + path, json=body, headers=headers(receiver)))
    job = told(http, hooks_gateway, job_id)
    assert job["status"] == "succeeded"
    assert [(d["attempt"], d["status"], d["error"]) for d in job["webhooks"]] == [(1, 200, None)]
    [event] = receiver.events()
    assert event["type"] == "job.succeeded"
    job.pop("webhooks")
    assert event["data"] == job  # the job's GET body
    assert receiver.received[0][1]["webhook-id"] == f"msg_{job_id}"


def test_a_failed_delivery_is_retried_and_every_attempt_recorded(
    hooks_gateway: GatewayServer, http: httpx.Client, receiver: Receiver
) -> None:
    receiver.received.clear()
    receiver.statuses[:] = [500, 503]
    path, body, _ = DIALECTS["melious"]
    job_id = accepted(http.post(hooks_gateway.url + path, json=body, headers=headers(receiver)))
    job = told(http, hooks_gateway, job_id)
    assert [(d["attempt"], d["status"]) for d in job["webhooks"]] == [(1, 500), (2, 503), (3, 200)]
    ids = {headers["webhook-id"] for _, headers in receiver.received}
    assert ids == {f"msg_{job_id}"}  # one event: the receiver's idempotency key
    assert len(receiver.events()) == 3


def test_failed_and_canceled_jobs_are_told_too(
    hooks_gateway: GatewayServer, http: httpx.Client, receiver: Receiver, fresh_emulators: dict[str, EmulatorServer]
) -> None:
    receiver.received.clear()
    fresh_emulators["melious"].emulator.add_fault(Fault(status=400, message="no"))
    path, body, _ = DIALECTS["melious"]
    failed = accepted(http.post(hooks_gateway.url + path, json=body, headers=headers(receiver)))
    assert told(http, hooks_gateway, failed)["status"] == "failed"
    fresh_emulators["melious"].emulator.add_fault(Fault(delay=5))
    canceled = accepted(http.post(hooks_gateway.url + path, json=body, headers=headers(receiver)))
    auth = {"Authorization": f"Bearer {KEYS['alice']}"}
    deadline = time.monotonic() + 10
    while http.get(f"{hooks_gateway.url}/v1/jobs/{canceled}", headers=auth).json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert http.delete(f"{hooks_gateway.url}/v1/jobs/{canceled}", headers=auth).status_code == 200
    assert told(http, hooks_gateway, canceled)["status"] == "canceled"
    events = {event["data"]["id"]: event for event in receiver.events()}
    assert events[failed]["type"] == "job.failed" and events[failed]["data"]["error"]["error"]["message"]
    assert events[canceled]["type"] == "job.canceled"


@pytest.mark.parametrize(
    ("who", "url"),
    [
        ("alice", "https://example.com/hook"),  # off alice's allow-list
        ("alice", "not a url"),
        ("bob", "http://127.0.0.1:9/hook"),  # bob has no webhooks
    ],
)
def test_a_webhook_url_the_key_may_not_call_is_refused_before_any_job(
    hooks_gateway: GatewayServer, http: httpx.Client, receiver: Receiver, who: str, url: str
) -> None:
    path, body, _ = DIALECTS["pomelo"]
    answer = http.post(hooks_gateway.url + path, json=body, headers=headers(receiver, who, url))
    assert answer.status_code == 400, answer.text
    assert "location" not in answer.headers
    plain_error = http.post(
        hooks_gateway.url + path, json={**body, "model": "none"}, headers={"Authorization": f"Bearer {KEYS[who]}"}
    )
    assert set(answer.json()) == set(plain_error.json())  # Pomelo's envelope
    assert "X-Webhook-URL" in answer.text


def test_a_job_without_a_webhook_has_no_deliveries(
    hooks_gateway: GatewayServer, http: httpx.Client, tmp_path: Path
) -> None:
    path, body, _ = DIALECTS["melious"]
    auth = {"Authorization": f"Bearer {KEYS['bob']}"}
    job_id = accepted(http.post(hooks_gateway.url + path, json=body, headers={**auth, "Prefer": "respond-async"}))
    deadline = time.monotonic() + 30
    while not ended(job := http.get(f"{hooks_gateway.url}/v1/jobs/{job_id}", headers=auth).json()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "webhooks" not in job
