"""Malformed input of every kind, in every dialect, against a real gateway process holding known secrets.

Every answer is a 4xx or a success, never a 5xx; and afterwards the whole log file holds
none of the secrets: not the providers' keys, not the image store's secret, not the Redis
password, not the key a client presented (the right one or a wrong one).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import msgspec
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.admission.auth import hash_key
from gateway.request.mounts import MOUNTS
from tests.emulators import EMULATORS, EmulatorServer, start_emulator
from tests.integration.conftest import PROVIDERS
from tests.integration.test_bad_input import JSON_DIALECTS, MULTIPART, PNG, check_envelope
from tests.servers import GatewayProcess

PROVIDER_KEYS = {kind: f"sk-upstream-{kind}-5f0c9a7e31d2" for kind in EMULATORS}
STORE_SECRET = "store-secret-8e2b61f4c0a7"
REDIS_PASSWORD = "redis-password-3d9a0c57e1"
CLIENT_KEY = "client-key-b7e4a1c90d3f"
WRONG_KEY = "wrong-client-key-2c6f8e0a91"
SECRETS = [*PROVIDER_KEYS.values(), STORE_SECRET, REDIS_PASSWORD, CLIENT_KEY, WRONG_KEY]

BEARER = {"Authorization": f"Bearer {CLIENT_KEY}"}
X_API_KEY = {"X-API-Key": CLIENT_KEY}
ENDPOINTS = {mount.prefix + mount.endpoint.path: mount.endpoint for mount in MOUNTS}
HYPOTHESIS = settings(
    max_examples=15,
    deadline=None,
    database=None,
    derandomize=True,  # the same bodies on every run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def secret_emulators() -> Iterator[dict[str, EmulatorServer]]:
    """The four emulators, each expecting its own secret key from the gateway."""
    running = {kind: start_emulator(kind, api_key=PROVIDER_KEYS[kind]) for kind in EMULATORS}
    yield running
    for server in running.values():
        server.stop()


@pytest.fixture(scope="module")
def gateway(
    secret_emulators: dict[str, EmulatorServer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A gateway process logging everything it can (debug, prompts), with a secret wherever the config has one."""
    tmp = tmp_path_factory.mktemp("secrets")
    providers = {
        name: {"kind": kind, "base_url": secret_emulators[kind].base_url, "api_key": PROVIDER_KEYS[kind], **extra}
        for name, (kind, extra, _) in PROVIDERS.items()
    }
    models = [
        {"name": f"via-{name}", "targets": [{"provider": name, "model": model}]}
        for name, (_, _, model) in PROVIDERS.items()
    ]
    models += [
        {"name": "flux-schnell", "targets": [{"provider": "melious", "model": "flux-schnell"}]},
        {"name": "flux.1", "targets": [{"provider": "pomelo-flux", "model": "flux.1"}]},
    ]
    config = {
        "server": {"log_level": "debug", "log_prompts": True, "max_body_bytes": 2 * 1024 * 1024},
        # Redis has no password, so every use of it fails: its errors are logged too, and must not name the password.
        "redis": {"url": f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0", "on_failure": "open"},
        "auth": {
            "keys": [{"name": "client", "hash": hash_key(CLIENT_KEY)}],
            "default_limits": {"requests": 1_000_000},  # so that every request asks Redis
        },
        "image_store": {"path": str(tmp / "store"), "secret": STORE_SECRET},
        "providers": providers,
        "models": models,
    }
    config_file = tmp / "gateway.yaml"
    config_file.write_text(yaml.safe_dump(config))
    process = GatewayProcess(config_file)
    try:
        yield process.wait_ready("/health")
    finally:
        process.stop()


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess) -> Iterator[httpx.Client]:
    """A client presenting the right key as a bearer token."""
    with httpx.Client(base_url=gateway.url, timeout=30.0, headers=BEARER) as http:
        yield http


@pytest.fixture(scope="module")
def x_client(gateway: GatewayProcess) -> Iterator[httpx.Client]:
    """A client presenting the right key in ``X-API-Key``."""
    with httpx.Client(base_url=gateway.url, timeout=30.0, headers=X_API_KEY) as http:
        yield http


def post_raw(client: httpx.Client, path: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    response = client.post(path, content=body, headers={"Content-Type": "application/json", **(headers or {})})
    assert response.status_code < 500, (path, body[:200], response.status_code, response.text)
    return response


def with_bad_bytes(body: dict[str, Any], field: str, bad: bytes) -> bytes:
    """``body`` as JSON with ``bad`` (raw bytes) inside the string value of ``field``."""
    marker = "@@BAD@@"
    return json.dumps({**body, field: f"x{marker}y"}).encode().replace(marker.encode(), bad)


def wire_fields(path: str) -> list[str]:
    return [field.encode_name for field in msgspec.structs.fields(ENDPOINTS[path].request_type)]


@pytest.mark.parametrize("dialect", list(JSON_DIALECTS))
def test_invalid_utf8_is_a_400_naming_the_field(dialect: str, client: httpx.Client) -> None:
    path, family, body, _ = JSON_DIALECTS[dialect]
    for bad in (b"\xff\xfe bad", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80"):
        response = post_raw(client, path, with_bad_bytes(body, "prompt", bad))
        assert response.status_code == 400, response.text
        answer = response.json()
        check_envelope(family, answer)
        assert "prompt" in answer["error"]["message"] and "UTF-8" in answer["error"]["message"]
        if family == "openai":
            assert answer["error"]["param"] == "prompt"
    for field, value in body.items():  # every string field the valid body has
        if isinstance(value, str):
            post_raw(client, path, with_bad_bytes(body, field, b"\xff"))
    post_raw(client, path, b"\xff\xfe{}")
    post_raw(client, path, b'{"prompt":"ok"}\xff')


@pytest.mark.parametrize("dialect", list(JSON_DIALECTS))
def test_nul_surrogates_nesting_and_huge_numbers(dialect: str, client: httpx.Client) -> None:
    path, _, body, _ = JSON_DIALECTS[dialect]
    text = json.dumps(body)
    prompts = ["a\u0000b", "\ud800", "a\udc00b", "\ud800\u0041", "\udfff\ud800", "\ud83d\ude00 ok"]
    for prompt in prompts:  # json.dumps writes each as \u escapes: lone surrogates stay lone
        post_raw(client, path, json.dumps({**body, "prompt": prompt}).encode())
    post_raw(client, path, text.replace('"ok"', '"a\x00b"').encode())  # a raw NUL inside a string
    post_raw(client, path, text.encode() + b"\x00")
    deep = b"[" * 100_000 + b"]" * 100_000
    post_raw(client, path, deep)
    post_raw(client, path, text[:-1].encode() + b', "x": ' + deep + b"}")
    post_raw(client, path, text[:-1].encode() + b', "prompt": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}")
    for field in wire_fields(path):
        for number in (b"1" * 5000, b"1e400", b"-1e400", b"1e-400", b"18446744073709551616", b"-9223372036854775809"):
            post_raw(client, path, json.dumps({**body, field: 0}).encode().replace(b": 0", b": " + number))


@pytest.mark.parametrize("dialect", list(JSON_DIALECTS))
def test_wrong_types_at_every_field(dialect: str, client: httpx.Client) -> None:
    path, _, body, _ = JSON_DIALECTS[dialect]
    for field in wire_fields(path):
        for value in (None, True, [], {}, "", "\u0000", -1, 1.5, [1, "a"], {"a": {"b": None}}, "x" * 10_000):
            post_raw(client, path, json.dumps({**body, field: value}).encode())


def json_values() -> st.SearchStrategy[Any]:
    text = st.text(st.characters(exclude_categories=()), max_size=12)  # lone surrogates and NUL included
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(10**30), max_value=10**30)
        | st.floats()
        | text
        | st.sampled_from(["512x512", "auto", "url", "b64_json", "via-melious", "png"])
    )
    return st.recursive(
        scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3), max_leaves=6
    )


@st.composite
def malformed_bodies(draw: st.DrawFn, dialect: str) -> bytes:
    """A dialect's valid body with some wire fields set to anything, maybe with bad bytes put in anywhere."""
    path, _, body, _ = JSON_DIALECTS[dialect]
    changed = draw(st.dictionaries(st.sampled_from(wire_fields(path)), json_values(), max_size=4))
    raw = json.dumps({**body, **changed}).encode()  # NaN and Infinity too: not JSON, so a 400
    bad = draw(st.sampled_from([b"", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\\ud800", b"\\"]))
    at = draw(st.integers(min_value=0, max_value=len(raw)))
    return raw[:at] + bad + raw[at:]


@pytest.mark.parametrize("dialect", list(JSON_DIALECTS))
def test_generated_malformed_bodies(dialect: str, client: httpx.Client, x_client: httpx.Client) -> None:
    path = JSON_DIALECTS[dialect][0]

    @HYPOTHESIS
    @given(body=malformed_bodies(dialect), by_header=st.booleans())
    def check(body: bytes, by_header: bool) -> None:
        post_raw(x_client if by_header else client, path, body)

    check()


@pytest.mark.parametrize(("path", "fields"), MULTIPART)
def test_multipart_text_that_is_not_utf8(path: str, fields: dict[str, str], client: httpx.Client) -> None:
    image = ("a.png", PNG, "image/png")

    def post(data: dict[str, str], files: list[tuple[str, Any]]) -> httpx.Response:
        response = client.post(path, data=data, files=[("image", image), *files])
        assert response.status_code < 500, (path, data, response.text)
        return response

    for name in fields:
        # A text field sent as a file part reaches the dialect as bytes: it names the field.
        response = post(
            {k: v for k, v in fields.items() if k != name}, [(name, ("t.txt", b"\xff\xfe bad", "text/plain"))]
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == name
        assert check_envelope("openai", response.json()) == "invalid_value"
        # As a plain text part: refused as text that is not UTF-8.
        raw = _multipart({**fields, name: b"\xff\xfe bad"})
        response = client.post(path, content=raw, headers={"Content-Type": "multipart/form-data; boundary=b0undary"})
        assert response.status_code == 400, response.text
        assert "UTF-8" in response.json()["error"]["message"]
    unknown_charset = _multipart(fields, charset="no-such-charset")
    response = client.post(
        path, content=unknown_charset, headers={"Content-Type": "multipart/form-data; boundary=b0undary"}
    )
    assert response.status_code == 400, response.text
    post({**fields, "prompt": "a\u0000b"} if "prompt" in fields else fields, [])
    for value in ("1e400", "99999999999999999999999", "-1", "\u0000", "\U0001f600"):
        post({**fields, "n": value}, [])
        post({**fields, "size": value}, [])


def _multipart(fields: Mapping[str, str | bytes], charset: str | None = None) -> bytes:
    """A multipart body with ``fields`` as text parts (raw bytes kept as they are) and one image."""
    parts = []
    for name, value in fields.items():
        content_type = f"Content-Type: text/plain; charset={charset}\r\n" if charset else ""
        raw = value if isinstance(value, bytes) else value.encode()
        parts.append(
            f'--b0undary\r\nContent-Disposition: form-data; name="{name}"\r\n{content_type}\r\n'.encode() + raw
        )
    image = b'--b0undary\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
    image += b"Content-Type: image/png\r\n\r\n"
    return b"\r\n".join([*parts, image + PNG, b"--b0undary--\r\n"])


def test_inbound_keys_right_and_wrong(gateway: GatewayProcess, client: httpx.Client, x_client: httpx.Client) -> None:
    path, _, body, _ = JSON_DIALECTS["melious"]
    assert client.post(path, json=body).status_code == 200
    assert x_client.post(path, json=body).status_code == 200
    url = gateway.url + path
    for headers in ({"Authorization": f"Bearer {WRONG_KEY}"}, {"Authorization": WRONG_KEY}, {"X-API-Key": WRONG_KEY}):
        assert httpx.post(url, json=body, headers=headers).status_code == 401
        assert httpx.post(url, content=with_bad_bytes(body, "prompt", b"\xff"), headers=headers).status_code == 401


def test_the_log_holds_no_secret(gateway: GatewayProcess, client: httpx.Client, x_client: httpx.Client) -> None:
    """Last in this module, so the log holds everything above too (debug level, prompts included)."""
    for path, _, body, _ in JSON_DIALECTS.values():  # what was a 500 logging the config and the headers
        for http in (client, x_client):
            assert post_raw(http, path, with_bad_bytes(body, "prompt", b"\xff\xfe")).status_code == 400
    log = gateway.log.read_bytes()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith(b"{")]
    assert sum(line.get("event") == "request" for line in lines) >= 2 * len(JSON_DIALECTS), "requests went unlogged"
    assert not [line for line in lines if "locals" in json.dumps(line)]
    found = {secret: log.count(secret.encode()) for secret in SECRETS if secret.encode() in log}
    assert not found, f"secrets in the log: {found}"
