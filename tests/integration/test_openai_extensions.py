"""The root /v1 family's documented extensions (``seed``, ``steps``, ``negative_prompt``, ``guidance``: as
vLLM-Omni's and SGLang's OpenAI-compatible image servers take them) reach the providers whose APIs carry
them, over real HTTP; a value outside a target's range is a 400 naming the field and the range, with no
upstream call; a value outside the wire's range is refused the same way."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.emulators import EmulatorServer
from tests.integration.gateway_server import GatewayServer

GENERATIONS = "/v1/images/generations"
PROMPT = "a lighthouse at dusk"


def last_body(emulators: dict[str, EmulatorServer], kind: str) -> Any:
    return emulators[kind].emulator.calls[-1].body


def test_seed_steps_and_negative_prompt_reach_pomelo_flux(
    gateway: GatewayServer, http: httpx.Client, emulators: dict[str, EmulatorServer]
) -> None:
    body = {"model": "via-pomelo-flux", "prompt": PROMPT, "seed": 4321, "steps": 12, "negative_prompt": "fog"}
    answer = http.post(gateway.url + GENERATIONS, json=body)
    assert answer.status_code == 200, answer.text
    sent = last_body(emulators, "pomelo")
    assert (sent["seed"], sent["steps"], sent["negative_prompt"]) == (4321, 12, "fog")


def test_steps_guidance_and_negative_prompt_reach_nebulablock_serverless(
    gateway: GatewayServer, http: httpx.Client, emulators: dict[str, EmulatorServer]
) -> None:
    body = {"model": "via-nebulablock-serverless", "prompt": PROMPT, "steps": 20, "guidance": 3.5}
    answer = http.post(gateway.url + GENERATIONS, json={**body, "negative_prompt": "fog", "size": "512x512"})
    assert answer.status_code == 200, answer.text
    sent = last_body(emulators, "nebulablock")
    assert (sent["num_steps"], sent["guidance_scale"], sent["negative_prompt"]) == (20, 3.5, "fog")


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (GENERATIONS, {"model": "via-pomelo-flux", "prompt": PROMPT, "steps": 99}, "steps"),
        ("/nebulablock/api/v1/images/generation", {"model": "via-pomelo-flux", "prompt": PROMPT, "num_steps": 99},
         "num_steps"),
    ],
)  # fmt: skip
def test_steps_beyond_a_targets_range_are_refused_without_a_call(
    path: str,
    body: dict[str, Any],
    field: str,
    gateway: GatewayServer,
    http: httpx.Client,
    emulators: dict[str, EmulatorServer],
) -> None:
    """Pomelo's Flux.1 takes 1 to 50 steps: 99 is never clamped nor dropped, and never sent."""
    answer = http.post(gateway.url + path, json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert re.search(rf"\b{field}\b", error["message"]) and "1 to 50" in error["message"], error
    assert error.get("param", field) == field  # OpenAI's envelope names it in `param` too
    assert emulators["pomelo"].emulator.calls == []


@pytest.mark.parametrize(
    ("extra", "field", "rule"),
    [
        ({"seed": -1}, "seed", "an integer from 0 to 9223372036854775807"),
        ({"steps": 0}, "steps", "an integer of at least 1"),
        ({"guidance": -2}, "guidance", "a number of at least 0"),
        ({"negative_prompt": 5}, "negative_prompt", "a string"),
    ],
)
def test_values_outside_the_wires_range_name_the_field(
    extra: dict[str, Any], field: str, rule: str, gateway: GatewayServer, http: httpx.Client
) -> None:
    answer = http.post(gateway.url + GENERATIONS, json={"model": "via-pomelo-flux", "prompt": PROMPT, **extra})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["param"], error["message"]) == (field, f"`{field}` must be {rule}")
