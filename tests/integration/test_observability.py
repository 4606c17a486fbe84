"""Metrics that move by the right amount after real traffic, and one request's whole story in its logs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.admission.auth import hash_key
from tests.emulators import EmulatorServer, Fault
from tests.integration.conftest import API_KEY, start_gateway
from tests.integration.gateway_server import GatewayServer

CLIENT_KEY = "sk-observability-0123456789"  # limited to 4 requests an hour
STORY_KEY = "sk-observability-story-0123"  # unlimited
SECRET_PROMPT = "a very private prompt about a lighthouse"


@pytest.fixture(scope="module")
def observed(emulators: dict[str, EmulatorServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    providers = {
        "obs-primary": {"kind": "melious", "base_url": emulators["melious"].base_url, "api_key": API_KEY},
        "obs-backup": {"kind": "nebul", "base_url": emulators["nebul"].base_url, "api_key": API_KEY},
    }
    models = [
        {"name": "obs-ok", "targets": [{"provider": "obs-primary", "model": "flux-schnell"}]},
        {
            "name": "obs-fallback",
            "targets": [
                {"provider": "obs-primary", "model": "flux-schnell"},
                {"provider": "obs-backup", "model": "black-forest-labs/FLUX.1-Kontext-dev"},
            ],
        },
    ]
    keys = [
        {"name": "obs", "hash": hash_key(CLIENT_KEY), "limits": {"requests": 4, "period_s": 3600}},
        {"name": "obs-story", "hash": hash_key(STORY_KEY)},
    ]
    server = start_gateway(
        emulators, models, tmp_path_factory.mktemp("store"), extra_providers=providers, auth={"keys": keys}
    )
    yield server
    server.stop()


def scrape(http: httpx.Client, server: GatewayServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(http.get(server.url + "/metrics").text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def delta(before: dict[Any, float], after: dict[Any, float], name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def generate(
    http: httpx.Client, server: GatewayServer, model: str, request_id: str = "", key: str = CLIENT_KEY
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", **({"X-Request-ID": request_id} if request_id else {})}
    return http.post(
        server.url + "/melious/v1/images/generations",
        json={"model": model, "prompt": SECRET_PROMPT, "size": "512x512"},
        headers=headers,
    )


def test_counters_move_by_the_right_amount(
    observed: GatewayServer, emulators: dict[str, EmulatorServer], http: httpx.Client
) -> None:
    before = scrape(http, observed)
    assert generate(http, observed, "obs-ok").status_code == 200  # plain success
    emulators["melious"].emulator.add_fault(Fault(status=503, times=1))
    assert generate(http, observed, "obs-ok").status_code == 200  # one retry, then success
    emulators["melious"].emulator.add_fault(Fault(status=503, times=None))
    assert generate(http, observed, "obs-fallback").status_code == 200  # three failures, then the backup
    emulators["melious"].emulator.clear_faults()
    assert generate(http, observed, "obs-ok").status_code == 200  # the key's 4th and last request
    assert generate(http, observed, "obs-ok").status_code == 429  # refused by the key's limit
    after = scrape(http, observed)

    ok = {"dialect": "melious", "operation": "generate", "outcome": "ok"}
    assert delta(before, after, "image_gateway_requests_total", **ok, model="obs-ok", provider="obs-primary") == 3
    assert delta(before, after, "image_gateway_requests_total", **ok, model="obs-fallback", provider="obs-backup") == 1
    refused = {"dialect": "melious", "operation": "generate", "outcome": "rate_limited"}
    assert delta(before, after, "image_gateway_requests_total", **refused, model="obs-ok", provider="none") == 1
    assert delta(before, after, "image_gateway_upstream_calls_total", provider="obs-primary", outcome="ok") == 3
    assert delta(before, after, "image_gateway_upstream_calls_total", provider="obs-primary", outcome="overloaded") == 4
    assert delta(before, after, "image_gateway_upstream_calls_total", provider="obs-backup", outcome="ok") == 1
    assert delta(before, after, "image_gateway_retries_total", provider="obs-primary") == 3
    assert delta(before, after, "image_gateway_fallbacks_total", model="obs-fallback") == 1
    assert delta(before, after, "image_gateway_rate_limited_total", scope="key") == 1
    assert delta(before, after, "image_gateway_images_generated_total", provider="obs-primary") == 3
    assert delta(before, after, "image_gateway_request_duration_seconds_count", dialect="melious", outcome="ok") == 4
    assert (
        delta(before, after, "image_gateway_upstream_call_duration_seconds_count", provider="obs-backup", outcome="ok")
        == 1
    )
    assert after[("image_gateway_in_flight_requests", ())] == 0


def test_labels_never_hold_a_prompt_or_key(observed: GatewayServer, http: httpx.Client) -> None:
    text = http.get(observed.url + "/metrics").text
    assert SECRET_PROMPT not in text and CLIENT_KEY not in text and API_KEY not in text


def read_log_lines(captured: str) -> list[dict[str, Any]]:
    lines = []
    for line in captured.splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return lines


def test_one_request_tells_its_whole_story_under_its_id(
    observed: GatewayServer, emulators: dict[str, EmulatorServer], http: httpx.Client, capfd: pytest.CaptureFixture[str]
) -> None:
    capfd.readouterr()
    emulators["melious"].emulator.add_fault(Fault(status=502, times=None))
    response = generate(http, observed, "obs-fallback", request_id="story-0001", key=STORY_KEY)
    emulators["melious"].emulator.clear_faults()
    captured = capfd.readouterr()
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "story-0001"
    story = [line for line in read_log_lines(captured.out) if line.get("request_id") == "story-0001"]
    # A failed call has a line of its own; the one that answered is told by the request's line.
    attempts = [line for line in story if line["event"] == "upstream_attempt"]
    assert [(line["provider"], line["outcome"], line["attempt"]) for line in attempts] == [
        ("obs-primary", "upstream_error", 1),
        ("obs-primary", "upstream_error", 2),
        ("obs-primary", "upstream_error", 3),
    ]
    (summary,) = [line for line in story if line["event"] == "request"]
    assert summary["outcome"] == "ok" and summary["provider"] == "obs-backup"
    assert summary["retries"] == 2 and summary["fallbacks"] == 1
    assert summary["tried"] == ["obs-primary:upstream_error"] * 3 + ["obs-backup:ok"]
    assert len(summary["upstream_ms"]) == 4 and all(ms > 0 for ms in summary["upstream_ms"])
    assert [line["duration_ms"] for line in attempts] == summary["upstream_ms"][:3]
    everything = captured.out + captured.err
    for secret in (SECRET_PROMPT, STORY_KEY, API_KEY):
        assert secret not in everything


def test_request_id_is_made_when_absent_or_insane(observed: GatewayServer, http: httpx.Client) -> None:
    made = http.get(observed.url + "/health").headers["x-request-id"]
    assert len(made) == 32
    insane = http.get(observed.url + "/health", headers={"X-Request-ID": "bad id with spaces"}).headers["x-request-id"]
    assert insane != "bad id with spaces" and len(insane) == 32


def test_the_alerted_counters_exist_at_zero_before_their_first_event(
    emulators: dict[str, EmulatorServer], tmp_path_factory: pytest.TempPathFactory, http: httpx.Client
) -> None:
    """A counter series born at 1 shows no increase() in Prometheus: the cooldown, credentials and rate-limit
    alerts would miss a process's first event. Each series they read is there at 0 from the start."""
    providers = {"obs-never-called": {"kind": "melious", "base_url": emulators["melious"].base_url, "api_key": "k"}}
    models = [{"name": "obs-idle", "targets": [{"provider": "obs-never-called", "model": "flux-schnell"}]}]
    server = start_gateway(emulators, models, tmp_path_factory.mktemp("store"), extra_providers=providers)
    try:
        samples = scrape(http, server)
    finally:
        server.stop()
    for name in ("image_gateway_cooldowns_total", "image_gateway_upstream_auth_failures_total"):
        assert samples[(name, (("provider", "obs-never-called"),))] == 0.0
    for scope in ("key", "model", "provider"):
        assert (("image_gateway_rate_limited_total", (("scope", scope),))) in samples
