"""Webhooks (gateway/jobs/webhooks.py): signed deliveries to a real loopback receiver, verified with the
Standard Webhooks reference verifier; retries; and the URLs a key may not call, refused with a 400."""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web
from prometheus_client import REGISTRY
from standardwebhooks import Webhook

from gateway.admission.auth import hash_key
from gateway.cli import main
from gateway.config import ConfigError, GatewayConfig, parse_config
from gateway.jobs.webhooks import Delivery, Webhooks, WebhookTarget
from schemas.canonical import ErrorCode, GatewayError

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
OTHER_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class Receiver:
    """A real HTTP server on loopback that records each delivery and answers the scripted statuses in turn."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.received: list[tuple[bytes, dict[str, str]]] = []
        self.elsewhere = 0  # requests to any other path (a redirect followed would land here)
        self.url = ""

    async def hook(self, request: web.Request) -> web.Response:
        self.received.append((await request.read(), dict(request.headers)))
        status = self.statuses[min(len(self.received), len(self.statuses)) - 1]
        headers = {"Location": "/elsewhere"} if 300 <= status < 400 else None
        return web.Response(status=status, headers=headers, text="noted")

    async def other(self, request: web.Request) -> web.Response:
        self.elsewhere += 1
        return web.Response(text="should never be called")


@pytest.fixture
async def serve_receiver() -> AsyncIterator[Any]:
    runners: list[web.AppRunner] = []

    async def start(statuses: list[int]) -> Receiver:
        receiver = Receiver(statuses)
        app = web.Application()
        app.router.add_post("/hook", receiver.hook)
        app.router.add_route("*", "/elsewhere", receiver.other)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        receiver.url = f"http://127.0.0.1:{port}/hook"
        return receiver

    yield start
    for runner in runners:
        await runner.cleanup()


def config(key_webhooks: str = "", delivery: str = "") -> GatewayConfig:
    """A config with key `alice` (its webhooks block as given), key `bob` with none, and the delivery block."""
    webhooks_line = f"\n      webhooks: {key_webhooks}" if key_webhooks else ""
    return parse_config(
        f"""
auth:
  keys:
    - name: alice
      hash: "{hash_key("alice-key")}"{webhooks_line}
    - name: bob
      hash: "{hash_key("bob-key")}"
webhooks: {{attempts: 5, backoff_initial_s: 0.01, backoff_max_s: 0.05, timeout_s: 5{delivery}}}
"""
    )


LOOPBACK_OK = f"{{secret: {SECRET}, allow_hosts: ['127.0.0.1'], allow_private: true, allow_http: true}}"


def verified(body: bytes, headers: dict[str, str], secret: str = SECRET) -> Any:
    return Webhook(secret).verify(body, headers)


async def test_a_delivery_is_signed_per_the_standard_and_verifies(serve_receiver: Any) -> None:
    receiver = await serve_receiver([200])
    hooks = Webhooks(config(LOOPBACK_OK))
    try:
        target = hooks.target("alice", receiver.url)
        assert target == WebhookTarget(url=receiver.url, key="alice")
        records = await hooks.deliver(target, "msg_2f1c", "job.succeeded", {"id": "job_1", "status": "succeeded"})
    finally:
        await hooks.aclose()
    assert [(record.attempt, record.status, record.error) for record in records] == [(1, 200, None)]
    [(body, headers)] = receiver.received
    payload = verified(body, headers)
    assert payload["type"] == "job.succeeded"
    assert payload["data"] == {"id": "job_1", "status": "succeeded"}
    assert payload["timestamp"].endswith("Z")
    assert headers["webhook-id"] == "msg_2f1c"
    assert headers["Content-Type"] == "application/json"
    with pytest.raises(Exception, match="No matching signature"):
        verified(body, headers, OTHER_SECRET)  # signed with alice's secret, not any other


async def test_retried_until_acknowledged_with_the_same_id(serve_receiver: Any) -> None:
    receiver = await serve_receiver([500, 500, 200])
    hooks = Webhooks(config(LOOPBACK_OK))
    before = REGISTRY.get_sample_value("image_gateway_webhook_deliveries_total", {"outcome": "status"}) or 0
    try:
        records = await hooks.deliver(hooks.target("alice", receiver.url), "msg_retry", "job.failed", {"id": "j"})  # type: ignore[arg-type]
    finally:
        await hooks.aclose()
    assert [(record.attempt, record.status) for record in records] == [(1, 500), (2, 500), (3, 200)]
    assert records[0].at <= records[1].at <= records[2].at
    assert len(receiver.received) == 3
    assert {headers["webhook-id"] for _, headers in receiver.received} == {"msg_retry"}
    assert len({body for body, _ in receiver.received}) == 1  # the same event every time
    for body, headers in receiver.received:
        assert verified(body, headers)["type"] == "job.failed"
    after = REGISTRY.get_sample_value("image_gateway_webhook_deliveries_total", {"outcome": "status"})
    assert after == before + 2


async def test_given_up_after_the_configured_attempts(serve_receiver: Any) -> None:
    receiver = await serve_receiver([503])
    hooks = Webhooks(config(LOOPBACK_OK, ", attempts: 3"))
    failures = REGISTRY.get_sample_value("image_gateway_webhook_failures_total", {"reason": "exhausted"}) or 0
    try:
        records = await hooks.deliver(hooks.target("alice", receiver.url), "msg_x", "job.failed", {})  # type: ignore[arg-type]
    finally:
        await hooks.aclose()
    assert [record.status for record in records] == [503, 503, 503]
    assert len(receiver.received) == 3
    assert REGISTRY.get_sample_value("image_gateway_webhook_failures_total", {"reason": "exhausted"}) == failures + 1


async def test_a_redirect_is_never_followed(serve_receiver: Any) -> None:
    receiver = await serve_receiver([307])
    hooks = Webhooks(config(LOOPBACK_OK, ", attempts: 2"))
    try:
        records = await hooks.deliver(hooks.target("alice", receiver.url), "msg_r", "job.succeeded", {})  # type: ignore[arg-type]
    finally:
        await hooks.aclose()
    assert [record.status for record in records] == [307, 307]
    assert receiver.elsewhere == 0


async def test_a_receiver_that_is_gone_is_recorded_as_no_connection() -> None:
    hooks = Webhooks(config(LOOPBACK_OK, ", attempts: 2"))
    dead = WebhookTarget(url="http://127.0.0.1:1/hook", key="alice")  # port 1: nobody listens
    try:
        records = await hooks.deliver(dead, "msg_d", "job.succeeded", {})
    finally:
        await hooks.aclose()
    assert [record.status for record in records] == [None, None]
    assert all(record.error and "no connection" in record.error for record in records)


async def test_the_address_is_checked_again_at_send_time(serve_receiver: Any) -> None:
    """A name that resolved to a public address when the job was made and to loopback now (DNS rebinding):
    the attempt is refused on the address the connection would use, and the receiver is never reached."""
    receiver = await serve_receiver([200])
    port = receiver.url.split(":")[2].split("/")[0]
    hooks = Webhooks(config(f"{{secret: {SECRET}, allow_hosts: [localhost, 127.0.0.1], allow_http: true}}"))
    refused = REGISTRY.get_sample_value("image_gateway_webhook_deliveries_total", {"outcome": "refused"}) or 0
    try:
        by_name = await hooks.deliver(WebhookTarget(f"http://localhost:{port}/hook", "alice"), "m1", "job.x", {})
        by_address = await hooks.deliver(WebhookTarget(receiver.url, "alice"), "m2", "job.x", {})
    finally:
        await hooks.aclose()
    for records in (by_name, by_address):
        assert [(record.status, record.error) for record in records] == [
            (
                None,
                "refused: the webhook host "
                + ("resolves to a loopback address" if records is by_name else "is a loopback address"),
            )
        ]
    assert receiver.received == []
    after = REGISTRY.get_sample_value("image_gateway_webhook_deliveries_total", {"outcome": "refused"})
    assert after == refused + 2


async def test_a_key_whose_webhooks_were_removed_gets_no_delivery(serve_receiver: Any) -> None:
    receiver = await serve_receiver([200])
    hooks = Webhooks(config(LOOPBACK_OK))
    try:
        records = await hooks.deliver(WebhookTarget(receiver.url, "bob"), "m", "job.x", {})
    finally:
        await hooks.aclose()
    assert len(records) == 1 and records[0].error and records[0].error.startswith("refused")
    assert receiver.received == []


def refusal(hooks: Webhooks, key: str | None, url: str) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        hooks.target(key, url)
    error = caught.value
    assert (error.code, error.status, error.param) == (ErrorCode.INVALID_REQUEST, 400, "X-Webhook-URL")
    assert error.public
    return error


# The default URL is a public address written as a literal (these machines resolve no public names): it is
# checked when a job is made, as X-Webhook-URL is.
DEFAULT_URL = "https://[2606:4700::1111]/default"
ALLOW = (
    f"{{secret: {SECRET}, url: '{DEFAULT_URL}',"
    " allow_hosts: ['*.partner.example', hooks.example.com, localhost, 127.0.0.1, 10.0.0.5, 169.254.169.254,"
    " '::ffff:10.0.0.5', '64:ff9b::a00:5', '64:ff9b::7f00:1', '64:ff9b::a9fe:a9fe', '64:ff9b:1::a00:5',"
    " '2002:a00:5::1', '2002:7f00:1::1', '::10.0.0.5', '::127.0.0.1', '2001:0:4136:e378:8000:63bf:3fff:fdd2']}"
)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://evil.example/hook", "not on this API key's webhook allow-list"),
        ("https://partner.example/hook", "not on this API key's webhook allow-list"),  # *.x is below x, not x
        ("https://partner.example.evil.com/hook", "not on this API key's webhook allow-list"),
        ("https://127.0.0.1/hook", "is a loopback address"),
        ("https://localhost/hook", "is a loopback address"),  # resolved: the name is loopback
        ("https://10.0.0.5/hook", "is a private or reserved address"),
        ("https://169.254.169.254/latest/meta-data", "is a link-local address"),
        # IPv6 forms that carry an IPv4 address: decided on the IPv4 address a connection reaches
        ("https://[::ffff:10.0.0.5]/hook", "is a private or reserved address"),  # IPv4-mapped
        ("https://[64:ff9b::a00:5]/hook", "is a private or reserved address"),  # NAT64 (RFC 6052) of 10.0.0.5
        ("https://[64:ff9b::7f00:1]/hook", "is a loopback address"),  # NAT64 of 127.0.0.1
        ("https://[64:ff9b::a9fe:a9fe]/latest/meta-data", "is a link-local address"),  # NAT64 of 169.254.169.254
        ("https://[64:ff9b:1::a00:5]/hook", "is a NAT64 local-use address"),  # RFC 8215
        ("https://[2002:a00:5::1]/hook", "is a private or reserved address"),  # 6to4 of 10.0.0.5
        ("https://[2002:7f00:1::1]/hook", "is a loopback address"),  # 6to4 of 127.0.0.1
        ("https://[::10.0.0.5]/hook", "is a private or reserved address"),  # IPv4-compatible
        ("https://[::127.0.0.1]/hook", "is a loopback address"),
        ("https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/hook", "is a private or reserved address"),  # Teredo
        ("http://hooks.example.com/hook", "must use https"),
        ("not a url", "absolute https URL"),
        ("https:///hook", "absolute https URL"),
        ("ftp://hooks.example.com/hook", "absolute https URL"),
        ("https://hooks.example.com:99999/hook", "not a valid URL"),
        ("https://user:pw@hooks.example.com/hook", "credentials"),
        ("https://hooks.example.com/" + "a" * 2100, "at most 2048"),
    ],
)
def test_urls_a_key_may_not_call_are_refused_with_400(url: str, why: str) -> None:
    error = refusal(Webhooks(config(ALLOW)), "alice", url)
    assert why in error.message
    assert SECRET not in error.message


def test_public_ipv4_inside_ipv6_forms_may_be_called() -> None:
    """The embedded address decides both ways: NAT64 and 6to4 forms of a public IPv4 address pass the check."""
    hooks = Webhooks(config(f"{{secret: {SECRET}, allow_hosts: ['64:ff9b::808:808', '2002:808:808::1']}}"))
    for host in ("[64:ff9b::808:808]", "[2002:808:808::1]"):
        assert hooks.target("alice", f"https://{host}/hook") is not None


def test_a_keys_default_url_is_checked_when_the_job_is_made() -> None:
    """No X-Webhook-URL: the key's configured default is checked then, as the header would be, not at delivery."""
    hooks = Webhooks(config(f"{{secret: {SECRET}, url: 'https://10.0.0.7/hook'}}"))
    with pytest.raises(GatewayError) as caught:
        hooks.target("alice", None)
    assert caught.value.status == 400
    assert "this API key's webhook URL (`webhooks.url`): the host '10.0.0.7' is a private or reserved address" in (
        caught.value.message
    )
    public = Webhooks(config(f"{{secret: {SECRET}, url: 'https://[64:ff9b::808:808]/hook'}}"))
    assert public.target("alice", None) == WebhookTarget(url="https://[64:ff9b::808:808]/hook", key="alice")


def test_a_name_that_does_not_resolve_is_refused() -> None:
    hooks = Webhooks(config(f"{{secret: {SECRET}, allow_hosts: ['*.invalid']}}"))
    assert "does not resolve" in refusal(hooks, "alice", "https://no-such-host.invalid/hook").message


async def test_target_async_checks_the_same_off_the_event_loop() -> None:
    hooks = Webhooks(config(ALLOW))
    with pytest.raises(GatewayError, match="is a loopback address"):
        await hooks.target_async("alice", "https://localhost/hook")
    default = WebhookTarget(url=DEFAULT_URL, key="alice")
    assert await hooks.target_async("alice", None) == default


def test_a_key_without_webhooks_cannot_name_a_url() -> None:
    assert "no webhooks configured" in refusal(Webhooks(config(ALLOW)), "bob", "https://hooks.example.com/x").message


def test_the_default_url_and_no_url() -> None:
    hooks = Webhooks(config(ALLOW))
    assert hooks.target("alice", None) == WebhookTarget(url=DEFAULT_URL, key="alice")
    assert hooks.target("bob", None) is None
    assert Webhooks(config(LOOPBACK_OK)).target("alice", "") is None


def test_allow_private_lets_a_loopback_url_through() -> None:
    hooks = Webhooks(config(LOOPBACK_OK.replace("['127.0.0.1']", "['127.0.0.1', localhost]")))
    assert hooks.target("alice", "http://localhost:8/x") == WebhookTarget(url="http://localhost:8/x", key="alice")
    assert hooks.target("alice", "http://127.0.0.1:8/x") is not None


def test_an_open_gateway_uses_the_anonymous_settings() -> None:
    hooks = Webhooks(parse_config(f"webhooks: {{anonymous: {{secret: {SECRET}, url: 'https://1.1.1.1/x'}}}}"))
    assert hooks.target(None, None) == WebhookTarget(url="https://1.1.1.1/x", key="")
    assert Webhooks(parse_config("{}")).target(None, None) is None
    refusal(Webhooks(parse_config("{}")), None, "https://h.example/x")


def test_a_delivery_record_is_msgspec_encodable() -> None:
    record = Delivery(attempt=1, at=1.5, status=200)
    assert msgspec.json.decode(msgspec.json.encode([record]), type=list[Delivery]) == [record]


@pytest.mark.parametrize(
    ("block", "path"),
    [
        ("{secret: not-whsec}", "$.auth.keys[0].webhooks.secret"),
        ("{secret: whsec_c2hvcnQ=}", "$.auth.keys[0].webhooks.secret"),  # 5 bytes: too short
        (
            f"{{secret: {SECRET}, allow_hosts: [ok.example, 'https://x.example']}}",
            "$.auth.keys[0].webhooks.allow_hosts[1]",
        ),
        (f"{{secret: {SECRET}, allow_hosts: ['a.*.example']}}", "$.auth.keys[0].webhooks.allow_hosts[0]"),
        (f"{{secret: {SECRET}, url: 'http://h.example/x'}}", "$.auth.keys[0].webhooks.url"),
        (f"{{secret: {SECRET}, allow_privat: true}}", "$.auth.keys[0].webhooks"),
    ],
    ids=["not-whsec", "too-short", "url-as-host", "wildcard-host", "http-url", "unknown-field"],  # no random secret
)
def test_check_config_names_the_bad_webhook_field(
    block: str, path: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        config(block)
    assert f"at `{path}`" in str(caught.value)
    assert SECRET not in str(caught.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"auth: {{keys: [{{name: a, hash: '{hash_key('a')}', webhooks: {block}}}]}}\n")
    assert main(["check-config", str(bad)]) == 1
    assert path in capsys.readouterr().err


def test_check_config_names_a_bad_delivery_setting() -> None:
    with pytest.raises(ConfigError, match=r"at `\$\.webhooks\.attempts`"):
        parse_config("webhooks: {attempts: 0}")


async def test_deliveries_run_concurrently_without_mixing_policies(serve_receiver: Any) -> None:
    """Two keys at once, one allowed loopback and one not: each attempt is judged by its own key's settings."""
    receiver = await serve_receiver([200])
    port = receiver.url.split(":")[2].split("/")[0]
    block = f"secret: {SECRET}, allow_hosts: [localhost], allow_http: true"
    text = f"""
auth:
  keys:
    - {{name: a, hash: "{hash_key("a")}", webhooks: {{{block}, allow_private: true}}}}
    - {{name: b, hash: "{hash_key("b")}", webhooks: {{{block}}}}}
webhooks: {{attempts: 1}}
"""
    hooks = Webhooks(parse_config(text))
    url = f"http://localhost:{port}/hook"
    try:
        results = await asyncio.gather(
            *(hooks.deliver(WebhookTarget(url, key), f"m{i}", "job.x", {}) for i, key in enumerate("abab"))
        )
    finally:
        await hooks.aclose()
    assert [records[0].status for records in results] == [200, None, 200, None]
    assert len(receiver.received) == 2
