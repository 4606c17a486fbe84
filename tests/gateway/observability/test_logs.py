"""The log configuration itself: exceptions without frame locals, and every secret scrubbed from every line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from gateway.config import parse_config
from gateway.observability.logs import bind_inbound_keys, config_secrets, configure_logging, unbind_inbound_keys

UPSTREAM_KEY = "sk-upstream-4b1d2c9e7f"
STORE_SECRET = "store-secret-0a8f3e61"
REDIS_PASSWORD = "redis-pw-59c2d7"
CLIENT_KEY = "client-key-e3b0c44298"
SHORT_KEY = "k3y"  # a key too short to be replaced inside other words
ODD_KEY = 'we"ird\\key\n1'  # written escaped in a JSON line


def lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture
def logged(capfd: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    configure_logging("debug", log_prompts=True, secrets=[UPSTREAM_KEY, STORE_SECRET, SHORT_KEY, ODD_KEY])
    capfd.readouterr()
    yield capfd
    configure_logging()


def fail_holding_secrets(config: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> None:
    api_key = config["api_key"]  # noqa: F841 - a local that a traceback with locals would write
    raise RuntimeError("upstream refused")


def test_an_exception_is_logged_without_locals(logged: pytest.CaptureFixture[str]) -> None:
    try:
        fail_holding_secrets({"api_key": UPSTREAM_KEY}, [(b"authorization", f"Bearer {CLIENT_KEY}".encode())])
    except RuntimeError as exc:
        structlog.get_logger("t").error("unhandled_exception", exc_info=exc)
    out = logged.readouterr().out
    [line] = lines(out)
    [exception] = line["exception"]
    assert exception["exc_type"] == "RuntimeError" and exception["exc_value"] == "upstream refused"
    assert [frame["name"] for frame in exception["frames"]][-1] == "fail_holding_secrets"
    assert all("locals" not in frame for frame in exception["frames"])
    assert UPSTREAM_KEY not in out and CLIENT_KEY not in out


def test_configured_secrets_are_scrubbed_wherever_they_are(logged: pytest.CaptureFixture[str]) -> None:
    log = structlog.get_logger("t")
    log.info("nested", deep={"a": [{"b": f"prefix-{UPSTREAM_KEY}-suffix"}]}, odd=ODD_KEY, url=f"x?{STORE_SECRET}")
    log.warning("in_message", detail=RuntimeError(f"bad key {UPSTREAM_KEY!r}"))
    log.info("short", k=SHORT_KEY, word=f"a{SHORT_KEY}b")
    try:
        raise ValueError(f"the secret is {STORE_SECRET}")
    except ValueError:
        log.exception("failed")
    out = logged.readouterr().out
    parsed = lines(out)  # every line is still JSON
    assert len(parsed) == 4
    for secret in (UPSTREAM_KEY, STORE_SECRET, json.dumps(ODD_KEY)[1:-1], ODD_KEY):
        assert secret not in out
    assert parsed[0]["deep"] == {"a": [{"b": "prefix-[redacted]-suffix"}]}
    assert parsed[0]["odd"] == "[redacted]"
    assert parsed[2]["k"] == "[redacted]" and parsed[2]["word"] == f"a{SHORT_KEY}b"
    assert parsed[3]["exception"][0]["exc_value"] == "the secret is [redacted]"


def test_the_key_a_request_presents_is_scrubbed_from_its_lines(logged: pytest.CaptureFixture[str]) -> None:
    log = structlog.get_logger("t")
    headers = [(b"authorization", f"Bearer {CLIENT_KEY}".encode()), (b"x-api-key", b"other-key-77aa")]
    token = bind_inbound_keys(headers)
    try:
        log.info("seen", headers=headers, again=CLIENT_KEY, other="other-key-77aa")
    finally:
        unbind_inbound_keys(token)
    log.info("outside", header=f"Authorization: Bearer {CLIENT_KEY}")  # the bearer pattern catches it here
    out = logged.readouterr().out
    assert CLIENT_KEY not in out and "other-key-77aa" not in out
    assert lines(out)[1]["header"] == "Authorization: Bearer [redacted]"


def test_a_line_with_a_lone_surrogate_is_still_written(logged: pytest.CaptureFixture[str]) -> None:
    structlog.get_logger("t").info("odd", prompt="\ud800 half a pair", key_like=UPSTREAM_KEY)
    [line] = lines(logged.readouterr().out)
    assert line["prompt"] == "\ud800 half a pair" and line["key_like"] == "[redacted]"


def test_config_secrets_finds_every_secret() -> None:
    config = parse_config(
        f"""
redis: {{url: "redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0"}}
image_store: {{secret: {STORE_SECRET}}}
providers:
  a: {{kind: melious, base_url: "http://user:url-pw-1234@127.0.0.1:1", api_key: {UPSTREAM_KEY}}}
  b: {{kind: nebul, base_url: "http://127.0.0.1:2"}}
models: [{{name: m, targets: [{{provider: a, model: m}}]}}]
"""
    )
    assert set(config_secrets(config)) == {REDIS_PASSWORD, STORE_SECRET, UPSTREAM_KEY, "url-pw-1234"}


def test_webhook_secrets_are_config_secrets_and_scrubbed(capfd: pytest.CaptureFixture[str]) -> None:
    """A key's webhook secret and the open gateway's (``webhooks.anonymous.secret``) are found and never written."""
    key_secret = "whsec_" + "a2V5LXdlYmhvb2stc2VjcmV0LTAxMjM0NTY3ODk="
    anonymous_secret = "whsec_" + "YW5vbi13ZWJob29rLXNlY3JldC0wMTIzNDU2Nzg5"
    config = parse_config(
        f"""
auth:
  keys: [{{name: a, hash: "sha256:{"0" * 64}", webhooks: {{secret: {key_secret}}}}}]
webhooks: {{anonymous: {{secret: {anonymous_secret}}}}}
"""
    )
    assert {key_secret, anonymous_secret} <= set(config_secrets(config))
    configure_logging("debug", log_prompts=True, secrets=config_secrets(config))
    capfd.readouterr()
    try:
        structlog.get_logger("t").info("signing", detail=f"with {key_secret} and {anonymous_secret}")
    finally:
        configure_logging()
    out = capfd.readouterr().out
    assert key_secret not in out and anonymous_secret not in out
    assert lines(out)[0]["detail"] == "with [redacted] and [redacted]"


def test_standard_library_records_are_scrubbed(logged: pytest.CaptureFixture[str]) -> None:
    """What uvicorn and other libraries log through ``logging`` (their own handlers, not ours) is scrubbed too."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    library = logging.getLogger("tests.some_library")
    library.addHandler(handler)
    try:
        try:
            fail_holding_secrets({"api_key": UPSTREAM_KEY}, [])
        except RuntimeError as exc:
            raise ValueError(f"wrapped {STORE_SECRET}") from exc
    except ValueError:
        library.error("Exception in ASGI application: %s", UPSTREAM_KEY, exc_info=True)
    finally:
        library.removeHandler(handler)
    written = stream.getvalue()
    assert "Exception in ASGI application: [redacted]" in written
    assert "ValueError: wrapped [redacted]" in written and "fail_holding_secrets" in written
    assert UPSTREAM_KEY not in written and STORE_SECRET not in written


@pytest.mark.parametrize(
    "key",
    [
        "unauthorized",  # the value of the gateway's own `outcome` field
        '","level":"error","x":"',  # JSON structure, as the raw form of the key
        '\\",\\"level\\":\\"error',  # JSON structure, as the escaped form
        "info",  # short: a level
    ],
)
def test_a_crafted_key_cannot_rewrite_or_break_its_own_line(key: str, logged: pytest.CaptureFixture[str]) -> None:
    """The client's key is taken out of the values before the line is rendered, never out of the rendered text."""
    log = structlog.get_logger("t")
    token = bind_inbound_keys([(b"authorization", f"Bearer {key}".encode())])
    try:
        log.info("request", outcome="unauthorized", dialect="openai", model=f"m {key}", detail=f"saw {key}")
    finally:
        unbind_inbound_keys(token)
    [line] = lines(logged.readouterr().out)  # still one JSON object
    assert line["event"] == "request" and line["level"] == "info"
    assert line["outcome"] == "unauthorized" and line["dialect"] == "openai"
    assert key not in line["model"] and key not in line["detail"]
    assert set(line) == {"event", "level", "timestamp", "outcome", "dialect", "model", "detail"}
