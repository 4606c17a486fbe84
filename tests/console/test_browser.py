"""The console in a real browser (Debian's Chromium under Playwright): sign in with the admin key, generate
from the tiny model and see the image decode, see a provider cool down when its emulator fails, and be
refused without the key.

With ``IMAGE_GATEWAY_SCREENSHOTS=<dir>`` the tests also save the pages as PNG there (docs/ holds them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import openai_spec
from tests.console.conftest import ADMIN_KEY, CLIENT_KEY
from tests.emulators import EmulatorServer
from tests.integration.gateway_server import GatewayServer

SHOTS = os.environ.get("IMAGE_GATEWAY_SCREENSHOTS", "")


@pytest.fixture(autouse=True)
def _fresh(fresh_emulators: dict[str, EmulatorServer]) -> None:
    """No faults queued at the emulators."""


def screenshot(page: Any, name: str) -> None:
    if SHOTS:
        page.screenshot(path=str(Path(SHOTS) / name), full_page=True)


def sign_in(page: Any, gateway: GatewayServer, where: str = "playground") -> None:
    page.goto(f"{gateway.url}/console#{where}")
    page.get_by_label("Admin key").fill(ADMIN_KEY)
    page.get_by_role("button", name="Sign in").click()
    page.locator(f"#{where}").wait_for(state="visible")


def test_refused_without_the_admin_key(page: Any, console_gateway: GatewayServer) -> None:
    refused: list[int] = []
    page.on("response", lambda r: refused.append(r.status) if "/admin/api/" in r.url else None)
    page.goto(console_gateway.url + "/console#status")
    login = page.locator("#login")
    login.wait_for(state="visible")
    assert page.locator("#status").is_hidden() and page.locator("#playground").is_hidden()
    assert refused and set(refused) == {401}
    assert page.locator("#providers-table tbody tr").count() == 0  # nothing was shown

    page.get_by_label("Admin key").fill("not-the-admin-key")
    page.get_by_role("button", name="Sign in").click()
    page.locator("#login-error").filter(has_text="invalid API key").wait_for()
    assert login.is_visible() and page.locator("#status").is_hidden()
    assert page.evaluate("sessionStorage.length") == 0  # a refused key is not kept


def test_generates_from_the_tiny_model_and_the_image_decodes(page: Any, console_gateway: GatewayServer) -> None:
    sign_in(page, console_gateway)
    page.get_by_label("tiny").check()
    page.get_by_label("via-melious").check()  # side by side with an emulated provider
    page.get_by_label("Size").select_option("512x512")
    page.get_by_label("Seed").fill("1234")
    page.get_by_label("Inbound API key").fill(CLIENT_KEY)
    # Count the partial previews as they are shown (the final image replaces them), and the progress bar's moves.
    page.evaluate(
        """() => {
            window.previews = 0; window.progressValues = [];
            new MutationObserver(changes => { for (const change of changes) {
                for (const node of change.addedNodes) if (node.classList && node.classList.contains('preview'))
                    window.previews += 1;
                if (change.type === 'attributes' && change.target.tagName === 'PROGRESS'
                    && change.target.closest('article[data-model=tiny]'))
                    window.progressValues.push(change.target.value);
            } }).observe(document.body, { subtree: true, childList: true, attributes: true,
                                          attributeFilter: ['src', 'value', 'max'] });
        }"""
    )
    streamed: list[str] = []
    generations = "/v1/images/generations"

    def answered(response: Any) -> None:
        if response.url.endswith(generations):
            streamed.append(response.headers.get("content-type", ""))

    page.on("response", answered)
    page.get_by_role("button", name="Generate").click()

    card = page.locator('article.card[data-model="tiny"]')
    image = card.locator("img:not(.preview)")
    image.first.wait_for()
    page.wait_for_function(
        "() => { const i = document.querySelector('article[data-model=tiny] img:not(.preview)');"
        " return i && i.complete && i.naturalWidth > 0; }"
    )
    assert image.first.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [512, 512]
    assert any(kind.startswith("text/event-stream") for kind in streamed)  # the playground streamed
    assert page.evaluate("window.previews") >= 1  # a partial preview was shown before the final image
    card.locator('dd[data-fact="provider"]').wait_for()  # a stream's facts come from /admin/api/requests/{id}
    assert card.locator('dd[data-fact="provider"]').inner_text() == "local"
    assert card.locator('dd[data-fact="latency"]').inner_text().endswith(" ms")
    assert card.locator('dd[data-fact="seed"]').inner_text() == "1234"
    assert card.locator('dd[data-fact="cost"]').inner_text() == "0.2500 EUR"  # X-Gateway-Cost
    other = page.locator('article.card[data-model="via-melious"]')
    other.locator("img").first.wait_for()
    assert other.locator('dd[data-fact="provider"]').inner_text() == "melious"
    assert other.locator('dd[data-fact="cost"]').count() == 0  # unpriced: no X-Gateway-Cost header, no cost shown
    page.wait_for_function("() => [...document.querySelectorAll('article.card')].every(c => c.ariaBusy === 'false')")
    screenshot(page, "console-playground.png")

    # "Same again" sends the same request once more.
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.post_data or "") if r.url.endswith(generations) else None)
    page.get_by_role("button", name="Same again").click()
    page.wait_for_function(
        "() => document.querySelectorAll('article.card').length === 2"
        " && [...document.querySelectorAll('article.card')].every(c => c.ariaBusy === 'false')"
    )
    assert len(requests) == 2  # one per model
    assert all('"seed":1234' in body and '"size":"512x512"' in body for body in requests)


def test_same_again_repeats_the_image_byte_for_byte(page: Any, console_gateway: GatewayServer) -> None:
    """The console sends its seed (and steps) to /v1, which carries them to the model: "Same again" draws
    the very same PNG, streamed or not. Every answer the page read holds to OpenAI's document."""
    answers: list[Any] = []
    page.on("response", lambda r: answers.append(r) if r.url.endswith("/v1/images/generations") else None)
    sign_in(page, console_gateway)
    page.get_by_label("tiny").check()
    page.get_by_label("Size").select_option("256x256")
    page.get_by_label("Steps").fill("2")
    page.get_by_label("Inbound API key").fill(CLIENT_KEY)
    drawn: dict[str, list[str]] = {}
    for previews in (True, False):
        page.get_by_label("Show progress and partial previews when the route streams them").set_checked(previews)
        page.get_by_label("Seed").fill("")  # the console picks one and shows it; "Same again" repeats it
        for button in ("Generate", "Same again"):
            page.get_by_role("button", name=button).click()
            page.wait_for_function(
                "() => { const c = document.querySelector('article.card[data-model=tiny]');"
                " const i = c && c.querySelector('img:not(.preview)');"
                " return c.ariaBusy === 'false' && i && i.complete && i.naturalWidth > 0; }"
            )
            image = page.locator('article.card[data-model="tiny"] img:not(.preview)').first
            drawn.setdefault(str(previews), []).append(image.get_attribute("src") or "")
    for sources in drawn.values():
        assert sources[0].startswith("data:image/png;base64,") and sources[0] == sources[1]
    assert drawn["True"][0] != drawn["False"][0]  # each round its own seed: another picture
    assert len(answers) == 4
    for answer in answers:
        kind = answer.headers.get("content-type", "")
        assert openai_spec.answer_problems("/v1/images/generations", answer.status, kind, answer.body()) == []
    assert any(answer.headers.get("content-type", "").startswith("text/event-stream") for answer in answers)


def test_an_error_shows_the_dialects_message(page: Any, console_gateway: GatewayServer) -> None:
    sign_in(page, console_gateway)
    page.get_by_label("tiny").check()
    page.get_by_label("Inbound API key").fill("a-wrong-client-key")
    page.get_by_role("button", name="Generate").click()
    error = page.locator('article.card[data-model="tiny"] p.error')
    error.filter(has_text="invalid API key").wait_for()
    assert error.inner_text().startswith("401")


def test_a_provider_cools_down_when_its_emulator_fails(
    page: Any, console_gateway: GatewayServer, emulators: dict[str, EmulatorServer], http: httpx.Client
) -> None:
    sign_in(page, console_gateway, "status")
    row = page.locator('#providers-table tr[data-provider="melious"]')
    row.wait_for()
    assert row.get_attribute("data-state") == "up"
    page.locator('#local .local-card[data-provider="local"]').filter(has_text="cpu").wait_for()

    melious = emulators["melious"]
    told = http.post(melious.base_url + "/_emulator/faults", json={"status": 503, "times": None})
    assert told.status_code == 200
    failed = http.post(
        console_gateway.url + "/v1/images/generations",
        headers={"Authorization": f"Bearer {CLIENT_KEY}"},
        json={"model": "via-melious", "prompt": "a cat"},
    )
    assert failed.status_code >= 500

    page.locator('#providers-table tr[data-provider="melious"][data-state="cooling_down"]').wait_for()
    assert "cooling down" in row.inner_text()
    assert row.locator("td").nth(2).inner_text() != "—"  # until when
    budget = page.locator('#budgets-table tr[data-key="alice"]')
    assert "EUR" in budget.inner_text() and "UTC month" in budget.inner_text()
    screenshot(page, "console-status.png")


def test_readable_on_a_phone(chromium: Any, console_gateway: GatewayServer) -> None:
    context = chromium.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        page = context.new_page()
        page.set_default_timeout(60_000)
        sign_in(page, console_gateway)
        page.locator("#model-list input").first.wait_for()
        # Nothing wider than the screen: the form, the buttons and the tables fit (tables scroll in their box).
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390
        # Keyboard: the first Tab reaches the skip link, and Tab alone reaches every control up to Generate.
        page.reload()  # signed in still (the tab's session storage): focus starts at the top of the page
        page.locator("#model-list input").first.wait_for()
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.className") == "skip"
        page.get_by_label("Prompt").focus()
        reached = []
        for _ in range(30):
            page.keyboard.press("Tab")
            reached.append(page.evaluate("document.activeElement.id"))
            if reached[-1] == "generate":
                break
        assert reached[:5] == ["size", "n", "seed", "steps", "inbound-key"] and reached[-1] == "generate"
    finally:
        context.close()


def test_the_event_stream_reader_follows_the_standard(page: Any, console_gateway: GatewayServer) -> None:
    """The reader the playground uses for image streams (and the status page for its stream), in the browser:
    split across chunks, CRLF and LF, comments, multi-line data, an unnamed event."""
    page.goto(console_gateway.url + "/console")
    events = page.evaluate(
        """async () => {
            const { sseEvents } = await import('/console/assets/js/api.js');
            const chunks = [': hello\\r\\n', 'event: image_generation.partial_image\\r\\ndata: {"b64_json":', '"AAA",',
                            '"partial_image_index":0}\\r\\n\\r\\n', 'data: one\\ndata: two\\n\\n', 'event: x\\n\\n',
                            'id: 7\\nevent: image_generation.completed\\ndata: {"b64_json":"BBB"}\\n\\n'];
            const body = new ReadableStream({ start(c) { for (const t of chunks) c.enqueue(new TextEncoder().encode(t));
                                                          c.close(); } });
            const response = new Response(body, { headers: { 'content-type': 'text/event-stream' } });
            const found = [];
            for await (const e of sseEvents(response)) found.push(e);
            return found;
        }"""
    )
    assert events == [
        {"event": "image_generation.partial_image", "data": '{"b64_json":"AAA","partial_image_index":0}', "id": None},
        {"event": "message", "data": "one\ntwo", "id": None},
        {"event": "image_generation.completed", "data": '{"b64_json":"BBB"}', "id": "7"},
    ]
