"""Bad input, for each dialect: a clear 4xx in the client's own envelope and code, never a 500.

The expected wire codes are written out here from docs/errors.md, not read from the code
under test.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.emulators import EmulatorServer
from tests.integration.conftest import MAX_BODY_BYTES, start_gateway
from tests.integration.gateway_server import GatewayServer

DROP = object()  # a patch value meaning "leave the field out"

# Canonical code → (HTTP status, wire code) per envelope family, from docs/errors.md.
EXPECTED: dict[str, dict[str, str]] = {
    "melious": {
        "invalid_request": "VALIDATION_INVALID_VALUE",
        "invalid_prompt": "VALIDATION_INVALID_VALUE",
        "invalid_size": "VALIDATION_INVALID_VALUE",
        "model_not_found": "MODEL_NOT_FOUND",
    },
    "openai": {
        "invalid_request": "invalid_value",
        "invalid_prompt": "invalid_prompt",
        "invalid_size": "invalid_size",
        "model_not_found": "model_not_found",
    },
    "nebulablock": {
        "invalid_request": "invalid_request",
        "invalid_prompt": "invalid_prompt",
        "invalid_size": "invalid_size",
        "model_not_found": "model_not_found",
    },
}
EXPECTED["pomelo"] = EXPECTED["nebulablock"]
STATUS = {"invalid_request": 400, "invalid_prompt": 400, "invalid_size": 400, "model_not_found": 404}


def check_envelope(family: str, body: dict[str, Any]) -> str:
    """Assert the envelope's exact shape for ``family``; return its error code."""
    if family == "melious":
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    elif family == "openai":
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    elif family == "pomelo":
        assert body["status"] == "error" and set(body["error"]) == {"code", "message"}
    else:
        assert body["status"] == "error" and set(body["error"]) == {"code", "message", "details"}
        assert set(body["error"]["details"]) == {"reason"}
    assert body["error"]["message"]
    return str(body["error"]["code"])


# dialect → (path, envelope family, a valid body, {case: (patch, canonical code)})
JSON_DIALECTS: dict[str, tuple[str, str, dict[str, Any], dict[str, tuple[dict[str, Any], str]]]] = {
    "melious": (
        "/melious/v1/images/generations",
        "melious",
        {"model": "via-melious", "prompt": "ok"},
        {
            "wrong_type": ({"n": "two"}, "invalid_request"),
            "n_out_of_range": ({"n": 5}, "invalid_request"),
            "size_not_allowed": ({"size": "1000x1000"}, "invalid_size"),
            "unknown_format": ({"response_format": "gif"}, "invalid_request"),
        },
    ),
    "nebul": (
        "/nebul/v1/images/generations",
        "openai",
        {"model": "via-nebul", "prompt": "ok"},
        {
            "wrong_type": ({"guidance": "high"}, "invalid_request"),
            "n_out_of_range": ({"n": 11}, "invalid_request"),
            "size_not_allowed": ({"size": "big"}, "invalid_size"),
        },
    ),
    "openai-root": (
        "/v1/images/generations",
        "openai",
        {"model": "via-melious", "prompt": "ok"},
        {
            "wrong_type": ({"n": [1]}, "invalid_request"),
            "n_out_of_range": ({"n": 0}, "invalid_request"),
            "size_not_allowed": ({"size": "1024"}, "invalid_size"),
        },
    ),
    "pomelo-midjourney": (
        "/pomelo/api/v1/midjourney/generate",
        "pomelo",
        {"model": "via-melious", "prompt": "ok"},
        {
            "wrong_type": ({"width": "wide"}, "invalid_size"),
            "n_out_of_range": ({"num_outputs": 5}, "invalid_request"),
            "size_not_allowed": ({"width": 5000}, "invalid_size"),
        },
    ),
    "pomelo-flux": (
        "/pomelo/api/v1/flux.1",
        "pomelo",
        {"prompt": "ok"},
        {
            "wrong_type": ({"seed": "lucky"}, "invalid_request"),
            "n_out_of_range": ({"steps": 51}, "invalid_request"),
            "size_not_allowed": ({"aspect_ratio": "wide"}, "invalid_size"),
        },
    ),
    "nebulablock-serverless": (
        "/nebulablock/api/v1/images/generation",
        "nebulablock",
        {"model": "via-nebulablock-serverless", "prompt": "ok", "width": 512, "height": 512},
        {
            "wrong_type": ({"num_steps": "many"}, "invalid_request"),
            "n_out_of_range": ({"num_steps": 0}, "invalid_request"),
            "size_not_allowed": ({"width": 5000}, "invalid_size"),
            "bad_base64": ({"image": "/9j/4…/Z"}, "invalid_request"),
            "not_an_image": ({"image": base64.b64encode(b"hello, not an image").decode()}, "invalid_request"),
        },
    ),
    "nebulablock-v1": (
        "/nebulablock/v1/images/generate",
        "nebulablock",
        {"model": "via-nebulablock-v1", "prompt": "ok"},
        {
            "wrong_type": ({"n": "two"}, "invalid_request"),
            "n_out_of_range": ({"n": 11}, "invalid_request"),
            "size_not_allowed": ({"size": "huge"}, "invalid_size"),
        },
    ),
}
COMMON_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "missing_prompt": ({"prompt": DROP}, "invalid_prompt"),
    "empty_prompt": ({"prompt": ""}, "invalid_prompt"),
    "blank_prompt": ({"prompt": "   "}, "invalid_prompt"),
    "prompt_not_a_string": ({"prompt": 42}, "invalid_prompt"),
    "unknown_model": ({"model": "no-such-model"}, "model_not_found"),
}
CASES = [
    (dialect, case)
    for dialect, (_, _, _, own) in JSON_DIALECTS.items()
    for case in [*COMMON_CASES, *own]
    if not (dialect == "pomelo-flux" and case == "unknown_model")  # Flux.1's route implies its model
]


def patched(body: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    merged = {**body, **patch}
    return {key: value for key, value in merged.items() if value is not DROP}


@pytest.mark.parametrize(("dialect", "case"), CASES)
def test_bad_json_input(dialect: str, case: str, gateway: GatewayServer, http: httpx.Client) -> None:
    path, family, body, own = JSON_DIALECTS[dialect]
    patch, code = {**COMMON_CASES, **own}[case]
    response = http.post(gateway.url + path, json=patched(body, patch))
    assert response.status_code == STATUS[code], response.text
    assert check_envelope(family, response.json()) == EXPECTED[family][code]
    (field,) = patch
    assert field in response.json()["error"]["message"], "the message names the client's field"


@pytest.mark.parametrize("dialect", list(JSON_DIALECTS))
@pytest.mark.parametrize("raw", [b"{not json", b"[]", b"", b'"prompt"'])
def test_body_that_is_not_a_json_object(dialect: str, raw: bytes, gateway: GatewayServer, http: httpx.Client) -> None:
    path, family, _, _ = JSON_DIALECTS[dialect]
    response = http.post(gateway.url + path, content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert check_envelope(family, response.json()) in (
        EXPECTED[family]["invalid_request"],
        EXPECTED[family]["invalid_prompt"],
    )


@pytest.mark.parametrize("dialect", list(JSON_DIALECTS))
def test_body_over_the_limit(dialect: str, gateway: GatewayServer, http: httpx.Client) -> None:
    path, family, body, _ = JSON_DIALECTS[dialect]
    response = http.post(gateway.url + path, json={**body, "negative_prompt": "x" * (MAX_BODY_BYTES + 1)})
    assert response.status_code == 413, response.text
    assert check_envelope(family, response.json()) == EXPECTED[family]["invalid_request"]


MULTIPART = [
    ("/nebul/v1/images/edits", {"model": "via-nebul", "prompt": "hat"}),
    ("/nebul/v1/images/variations", {"model": "via-nebul"}),
    ("/v1/images/edits", {"model": "via-nebul", "prompt": "hat"}),
    ("/v1/images/variations", {"model": "via-nebul"}),
]
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGNgYGAAAAAEAAH2FzhVAAAAAElFTkSuQmCC")


@pytest.mark.parametrize(("path", "fields"), MULTIPART)
def test_multipart_bad_input(path: str, fields: dict[str, str], gateway: GatewayServer, http: httpx.Client) -> None:
    def post(data: dict[str, str], files: Any) -> dict[str, Any]:
        response = http.post(gateway.url + path, data=data, files=files)
        assert 400 <= response.status_code < 500, response.text
        return response.json()

    not_image = post(fields, {"image": ("a.png", b"GIF89a-not-really", "image/png")})
    assert check_envelope("openai", not_image) == "invalid_value"
    assert not_image["error"]["param"] == "image"
    missing = post(fields, None)
    assert check_envelope("openai", missing) == "invalid_value"
    assert missing["error"]["message"] == "`image` is required: one or more image files"
    bad_n = post({**fields, "n": "eleven"}, {"image": ("a.png", PNG, "image/png")})
    assert check_envelope("openai", bad_n) == "invalid_value"
    assert bad_n["error"]["message"] == "`n` must be an integer from 1 to 10"
    if "prompt" in fields:
        no_prompt = post({"model": fields["model"]}, {"image": ("a.png", PNG, "image/png")})
        assert check_envelope("openai", no_prompt) == "invalid_prompt"
        bad_mask = post(fields, [("image", ("a.png", PNG, "image/png")), ("mask", ("m.png", b"nope", "image/png"))])
        assert bad_mask["error"]["param"] == "mask"


def test_multipart_body_over_the_limit(gateway: GatewayServer, http: httpx.Client) -> None:
    big = PNG + b"\x00" * (MAX_BODY_BYTES + 1)
    response = http.post(
        gateway.url + "/nebul/v1/images/edits",
        data={"model": "m", "prompt": "p"},
        files={"image": ("a.png", big, "image/png")},
    )
    assert response.status_code == 413, response.text
    assert check_envelope("openai", response.json()) == "invalid_value"


@pytest.mark.parametrize(
    ("method", "path", "family"),
    [
        ("GET", "/melious/v1/images/generations", "melious"),
        ("DELETE", "/nebulablock/v1/images/generate", "nebulablock"),
        ("POST", "/nope", "openai"),
    ],
)
def test_wrong_method_or_path(method: str, path: str, family: str, gateway: GatewayServer, http: httpx.Client) -> None:
    response = http.request(method, gateway.url + path)
    assert response.status_code in (404, 405), response.text
    check_envelope(family, response.json())


# dialect → (a patch, words the message must hold: the client's field and what it may hold)
ALLOWED_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    "melious": (
        {"size": "256x256"},
        "`size` must be one of 512x512, 768x768, 1024x1024, 1024x768, 768x1024, 1280x720, 720x1280",
    ),
    "nebul": ({"size": "big"}, "`size` must be auto or WIDTHxHEIGHT in pixels"),
    "openai-root": ({"n": 0}, "`n` must be an integer from 1 to 10"),
    "pomelo-midjourney": ({"num_outputs": 5}, "`num_outputs` must be an integer from 1 to 4"),
    "pomelo-flux": ({"aspect_ratio": "wide"}, "`aspect_ratio` must be a ratio WIDTH:HEIGHT of whole numbers"),
    "nebulablock-serverless": ({"num_steps": 0}, "`num_steps` must be an integer of at least 1"),
    "nebulablock-v1": ({"style": "anime"}, "`style` must be one of artistic, natural, vivid"),
}
# What a client never reads: the validator's own wording.
INTERNALS = ("Expected `", "enum", "regex", "$.", "^(")


@pytest.mark.parametrize("dialect", list(JSON_DIALECTS))
def test_message_says_what_is_allowed(dialect: str, gateway: GatewayServer, http: httpx.Client) -> None:
    path, family, body, _ = JSON_DIALECTS[dialect]
    patch, words = ALLOWED_VALUES[dialect]
    response = http.post(gateway.url + path, json=patched(body, patch))
    assert response.status_code == 400, response.text
    check_envelope(family, response.json())
    message = response.json()["error"]["message"]
    assert words in message
    assert not [internal for internal in INTERNALS if internal in message], message


@pytest.mark.parametrize("dialect", list(JSON_DIALECTS))
@pytest.mark.parametrize(
    ("raw", "words"),
    [(b"{not json", "Request body is not valid JSON"), (b"[1, 2]", "Request body must be a JSON object")],
)
def test_not_json_or_not_an_object_says_so(
    dialect: str, raw: bytes, words: str, gateway: GatewayServer, http: httpx.Client
) -> None:
    path, family, _, _ = JSON_DIALECTS[dialect]
    response = http.post(gateway.url + path, content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert check_envelope(family, response.json()) == EXPECTED[family]["invalid_request"]
    assert response.json()["error"]["message"].startswith(words)


def test_melious_answers_only_its_documented_validation_code(gateway: GatewayServer, http: httpx.Client) -> None:
    """seeds/melious.txt: VALIDATION_INVALID_VALUE, "Invalid size or parameter"; no other validation code."""
    url = gateway.url + "/melious/v1/images/generations"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"size": "1000x1000"}, "size"),
        ({"prompt": DROP}, "prompt"),
        ({"prompt": ["a", "list"]}, "prompt"),
        ({"n": 9}, "n"),
        ({"n": 1.5}, "n"),
        ({"response_format": "png"}, "response_format"),
        ({"user": {"id": 1}}, "user"),
    ]
    for patch, field in cases:
        response = http.post(url, json=patched({"model": "via-melious", "prompt": "ok"}, patch))
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "VALIDATION_INVALID_VALUE", response.text
        assert f"`{field}`" in response.json()["error"]["message"]


def test_a_later_limit_names_the_clients_field(gateway: GatewayServer, http: httpx.Client) -> None:
    """A NebulaBlock client's `num_steps`, refused by the Flux.1 provider behind it as `steps`, is `num_steps`."""
    response = http.post(
        gateway.url + "/nebulablock/api/v1/images/generation",
        json={"model": "via-pomelo-flux", "prompt": "ok", "num_steps": 60},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["message"].startswith("`num_steps`") and "`steps`" not in error["message"]
    assert error["details"]["reason"].endswith("(`num_steps`)")


# dialect → (path, envelope family, a valid body with room for a prompt, its prompt fields)
PROMPTED: dict[str, tuple[str, str, dict[str, Any], tuple[str, ...]]] = {
    "melious": ("/melious/v1/images/generations", "melious", {"model": "via-melious"}, ("prompt",)),
    "nebul": ("/nebul/v1/images/generations", "openai", {"model": "via-nebul"}, ("prompt",)),
    "openai-root": ("/v1/images/generations", "openai", {"model": "via-melious"}, ("prompt",)),
    "pomelo-midjourney": ("/pomelo/api/v1/midjourney/generate", "pomelo", {"model": "via-melious"}, ("prompt",)),
    "pomelo-flux": ("/pomelo/api/v1/flux.1", "pomelo", {}, ("prompt", "negative_prompt")),
    "nebulablock-serverless": (
        "/nebulablock/api/v1/images/generation",
        "nebulablock",
        {"model": "via-nebulablock-serverless", "width": 512, "height": 512},
        ("prompt", "negative_prompt"),
    ),
    "nebulablock-v1": (
        "/nebulablock/v1/images/generate",
        "nebulablock",
        {"model": "via-nebulablock-v1"},
        ("prompt", "negative_prompt"),
    ),
}
DEFAULT_MAX_PROMPT_CHARS = 32_000  # OpenAI's limit, the documented default


def calls(emulators: dict[str, EmulatorServer]) -> int:
    return sum(len(server.emulator.calls) for server in emulators.values())


@pytest.mark.parametrize("dialect", list(PROMPTED))
def test_a_prompt_over_the_limit_is_refused_in_the_dialect(
    dialect: str, gateway: GatewayServer, http: httpx.Client, emulators: dict[str, EmulatorServer]
) -> None:
    path, family, body, fields = PROMPTED[dialect]
    for field in fields:
        long = {"prompt": "ok", field: "x" * (DEFAULT_MAX_PROMPT_CHARS + 1)}
        response = http.post(gateway.url + path, json={**body, **long})
        assert response.status_code == 400, response.text
        assert check_envelope(family, response.json()) == EXPECTED[family]["invalid_prompt"]
        message = response.json()["error"]["message"]
        assert f"`{field}`" in message and str(DEFAULT_MAX_PROMPT_CHARS) in message
        if family == "openai":
            assert response.json()["error"]["param"] == field
    assert calls(emulators) == 0, "a refused prompt is never forwarded"
    at_limit = http.post(gateway.url + path, json={**body, "prompt": "x" * DEFAULT_MAX_PROMPT_CHARS})
    assert at_limit.status_code == 200, at_limit.text


def test_a_multipart_prompt_over_the_limit_is_refused(gateway: GatewayServer, http: httpx.Client) -> None:
    response = http.post(
        gateway.url + "/nebul/v1/images/edits",
        data={"model": "via-nebul", "prompt": "x" * (DEFAULT_MAX_PROMPT_CHARS + 1)},
        files={"image": ("a.png", PNG, "image/png")},
    )
    assert response.status_code == 400, response.text
    assert check_envelope("openai", response.json()) == "invalid_prompt"
    assert response.json()["error"]["param"] == "prompt"


def test_the_prompt_limit_is_configurable(
    emulators: dict[str, EmulatorServer], http: httpx.Client, tmp_path: Path
) -> None:
    server = start_gateway(
        emulators,
        [{"name": "m", "targets": [{"provider": "melious", "model": "flux-schnell"}]}],
        tmp_path,
        server={"max_prompt_chars": 10},
    )
    try:
        url = server.url + "/melious/v1/images/generations"
        refused = http.post(url, json={"model": "m", "prompt": "eleven char"})
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"] == {
            "code": "VALIDATION_INVALID_VALUE",
            "message": "`prompt` is 11 characters long; at most 10 are allowed",
        }
        assert http.post(url, json={"model": "m", "prompt": "ten chars!"}).status_code == 200
    finally:
        server.stop()
