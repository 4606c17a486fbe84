"""Webhooks: a signed POST telling a client's server that its job ended (issue 12, item 4).

Deliveries follow the Standard Webhooks specification (https://www.standardwebhooks.com):
the body is ``{"type", "timestamp", "data"}``; the headers ``webhook-id`` (the same on
every retry: the receiver's idempotency key), ``webhook-timestamp`` (unix seconds of the
attempt) and ``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``
keyed with the inbound key's secret (``whsec_<base64>``: the base64 part is the key). An
attempt that gets no 2xx is retried with exponential backoff up to
``webhooks.attempts`` / ``webhooks.give_up_after_s`` (tenacity drives the retries, as it drives the
router's, gateway/routing/router.py); every attempt is recorded.

A webhook is an outbound request whose URL the client chose, so it must never reach the
operator's own network: the URL's host must be on the key's ``allow_hosts`` (or be the
host of its configured default URL), https unless ``allow_http``, and every address the
host resolves to must be public unless ``allow_private``. The address is checked when a
job names the URL (``target``) and again at each attempt, on the very addresses the
connection is made to (the session's resolver refuses the others), so a name that
resolves to a public address first and a private one later (DNS rebinding) is refused.
Redirects are never followed; connections are never reused.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextvars
import hashlib
import hmac
import ipaddress
import random
import socket
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import SplitResult, urlsplit

import aiohttp
import msgspec
import structlog
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from tenacity import AsyncRetrying, RetryCallState, retry_if_result, stop_after_attempt
from tenacity.stop import stop_base

from gateway.config import GatewayConfig, KeyWebhooks, WebhooksConfig
from gateway.observability import metrics
from schemas.canonical import ErrorCode, GatewayError

__all__ = ["Delivery", "WebhookTarget", "Webhooks", "sign"]

log = structlog.get_logger("gateway.webhooks")

HEADER = "X-Webhook-URL"
MAX_URL_CHARS = 2048
USER_AGENT = "image-gateway-webhooks"
# The key an anonymous request (an open gateway, no auth.keys) is delivered under: webhooks.anonymous.
ANONYMOUS = ""

# Whether the attempt being sent in this task may reach private addresses (read by the resolver).
_allow_private: contextvars.ContextVar[bool] = contextvars.ContextVar("webhook_allow_private", default=False)
_resolving = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="webhook-resolve")


class WebhookTarget(msgspec.Struct, frozen=True):
    """Where a job's webhook goes, and the inbound key's NAME whose secret signs it (``""``: anonymous)."""

    url: str
    key: str


class Delivery(msgspec.Struct):
    """One attempt: its number (1 first), when it was sent (unix s), the receiver's status or why none came."""

    attempt: int
    at: float
    status: int | None = None
    error: str | None = None


class AddressRefused(OSError):
    """A webhook host resolved to an address its key may not call."""


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052's well-known prefix: the last 32 bits are the IPv4 address
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215's local-use prefix: where the IPv4 sits is local
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # RFC 4291's deprecated IPv4-compatible form (:: and ::1 aside)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (and so what a connection to it reaches), or None.

    IPv4-mapped (``::ffff:a.b.c.d``), NAT64 (``64:ff9b::a.b.c.d``), 6to4 (``2002:AABB:CCDD::/48``) and
    IPv4-compatible (``::a.b.c.d``): the check is made on the IPv4 address.
    """
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    return None  # Teredo (2001::/32) and the rest are not global: refused as they are


def _refusal(address: str, allow_private: bool) -> str | None:
    """Why ``address`` may not be called, or None when it may."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL and not allow_private:
            return "a NAT64 local-use address (64:ff9b:1::/48)"
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            ip = embedded
    if ip.is_unspecified or ip.is_multicast:
        return "an unspecified or multicast address"
    if allow_private:
        return None
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if not ip.is_global:
        return "a private or reserved address"
    return None


def _refused_among(addresses: list[str], allow_private: bool) -> str | None:
    for address in addresses:
        why = _refusal(address, allow_private)
        if why is not None:
            return why
    return None


class _GuardedResolver(AbstractResolver):
    """The system resolver, refusing a name when any address it resolves to is not allowed for this attempt."""

    def __init__(self) -> None:
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        why = _refused_among([entry["host"] for entry in found], _allow_private.get())
        if why is not None:
            raise AddressRefused(f"the webhook host resolves to {why}")
        return found

    async def close(self) -> None:
        await self._inner.close()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256>`` of ``{id}.{timestamp}.{body}``."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _host_allowed(host: str, settings: KeyWebhooks) -> bool:
    allowed = list(settings.allow_hosts)
    if settings.url:
        default_host = urlsplit(settings.url).hostname
        if default_host:
            allowed.append(default_host)
    for pattern in allowed:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


def _bad_url(message: str) -> GatewayError:
    return GatewayError(ErrorCode.INVALID_REQUEST, message, param=HEADER, status=400, public=True)


def _checked_url(url: str, settings: KeyWebhooks, name: str = HEADER) -> tuple[SplitResult, str]:
    """The URL's parts and its host, or the 400 saying why this key may not call it (no address check)."""
    if len(url) > MAX_URL_CHARS or any(ord(char) <= 0x20 or ord(char) >= 0x7F for char in url):
        raise _bad_url(f"{name} must be an absolute https URL of at most {MAX_URL_CHARS} printable ASCII characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number in range)
    except ValueError:
        raise _bad_url(f"{name} is not a valid URL") from None
    host = parts.hostname or ""
    if parts.scheme not in ("https", "http") or not host:
        raise _bad_url(f"{name} must be an absolute https URL")
    if parts.scheme == "http" and not settings.allow_http:
        raise _bad_url(f"{name} must use https")
    if parts.username is not None or parts.password is not None:
        raise _bad_url(f"{name} must not carry credentials (user:password@)")
    if not _host_allowed(host, settings):
        raise _bad_url(f"{name}: the host {host!r} is not on this API key's webhook allow-list")
    return parts, host


def _literal_ip(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


class Webhooks:
    """Webhook targets checked against each key's settings, and signed deliveries with retries."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config: WebhooksConfig = config.webhooks
        self._keys: dict[str, KeyWebhooks] = {key.name: key.webhooks for key in config.auth.keys if key.webhooks}
        if config.webhooks.anonymous is not None and not config.auth.keys:
            self._keys[ANONYMOUS] = config.webhooks.anonymous
        self._session: aiohttp.ClientSession | None = None

    def settings(self, key_name: str | None) -> KeyWebhooks | None:
        """The webhook settings of a key by its name (None: anonymous, an open gateway)."""
        return self._keys.get(key_name or ANONYMOUS)

    def target(self, key_name: str | None, header_url: str | None) -> WebhookTarget | None:
        """The URL a job asked for (``X-Webhook-URL``) or its key's configured default; None when neither.

        A URL this key may not call is a 400 ``invalid_request`` naming ``X-Webhook-URL``. The
        host is resolved here (only once it is on the allow-list, within
        ``webhooks.resolve_timeout_s``): a name that resolves to a refused address is refused now.
        """
        settings = self.settings(key_name)
        name = key_name or ANONYMOUS
        if header_url is None or not header_url.strip():
            if settings is None or not settings.url:
                return None
            # The key's default is checked as the header would be, now, when the job is made (as documented).
            url, said = settings.url, "this API key's webhook URL (`webhooks.url`)"
        elif settings is None:
            raise _bad_url(f"{HEADER}: this API key has no webhooks configured")
        else:
            url, said = header_url.strip(), HEADER
        parts, host = _checked_url(url, settings, said)
        addresses = [literal] if (literal := _literal_ip(host)) else self._resolve(host, parts.port, said)
        why = _refused_among(addresses, settings.allow_private)
        if why is not None:
            raise _bad_url(f"{said}: the host {host!r} is {why}, which webhooks may not call")
        return WebhookTarget(url=url, key=name)

    async def target_async(self, key_name: str | None, header_url: str | None) -> WebhookTarget | None:
        """``target`` off the event loop: its name resolution may wait up to ``webhooks.resolve_timeout_s``."""
        return await asyncio.to_thread(self.target, key_name, header_url)

    def _resolve(self, host: str, port: int | None, said: str = HEADER) -> list[str]:
        future = _resolving.submit(socket.getaddrinfo, host, port or 443, type=socket.SOCK_STREAM)
        try:
            found = future.result(timeout=self.config.resolve_timeout_s)
        except concurrent.futures.TimeoutError:
            raise _bad_url(f"{said}: the host {host!r} could not be resolved in time") from None
        except OSError:
            raise _bad_url(f"{said}: the host {host!r} does not resolve") from None
        return [str(entry[4][0]) for entry in found]

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(resolver=_GuardedResolver(), use_dns_cache=False, force_close=True)
            self._session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _backoff(self, retry: int) -> float:
        """The wait before retry number ``retry`` (1 first): doubling from the initial, capped, ±10% jitter."""
        base = min(self.config.backoff_max_s, self.config.backoff_initial_s * 2 ** (retry - 1))
        return float(base * random.uniform(0.9, 1.1))

    def _retrying(self) -> AsyncRetrying:
        """The schedule: ``attempts`` in all, ``_backoff`` between them, none that would start past
        ``give_up_after_s``; an attempt that ends the deliveries (a 2xx, a refused URL) is the last."""
        return AsyncRetrying(
            stop=stop_after_attempt(self.config.attempts) | _StartsTooLate(self.config.give_up_after_s),
            wait=lambda state: self._backoff(state.attempt_number),
            retry=retry_if_result(lambda final: not final),
            retry_error_callback=lambda state: False,  # given up: not final
            sleep=asyncio.sleep,
        )

    async def deliver(
        self, target: WebhookTarget, msg_id: str, event_type: str, data: dict[str, Any]
    ) -> list[Delivery]:
        """POST the event to ``target`` until a 2xx, within the configured attempts and time; every attempt's record.

        The body is the same on every attempt; each attempt is signed with its own timestamp.
        A URL or address the key may not (any longer) call ends the deliveries at once.
        """
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        body = msgspec.json.encode({"type": event_type, "timestamp": stamp, "data": data})
        deliveries: list[Delivery] = []

        async def attempt() -> bool:
            delivery, final = await self._attempt(target, msg_id, body, len(deliveries) + 1)
            deliveries.append(delivery)
            log.info(
                "webhook_delivery",
                webhook_id=msg_id,
                event_type=event_type,
                key_name=target.key,
                attempt=delivery.attempt,
                status=delivery.status,
                error=delivery.error,
            )
            return final

        if not await self._retrying()(attempt):
            metrics.child(metrics.WEBHOOK_FAILURES, "exhausted").inc()
        return deliveries

    async def _attempt(self, target: WebhookTarget, msg_id: str, body: bytes, attempt: int) -> tuple[Delivery, bool]:
        """One POST: its record, and whether the deliveries end with it (a 2xx, or a refused URL)."""
        at = time.time()
        settings = self.settings(target.key)
        try:
            if settings is None:
                raise _bad_url("the key has no webhooks configured (any longer)")
            _, host = _checked_url(target.url, settings)
            literal = _literal_ip(host)
            why = _refusal(literal, settings.allow_private) if literal else None
            if why is not None:
                raise AddressRefused(f"the webhook host is {why}")
        except (GatewayError, AddressRefused) as exc:
            return self._refused(attempt, at, str(exc)), True
        timestamp = int(at)
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(settings.secret, msg_id, timestamp, body),
        }
        token = _allow_private.set(settings.allow_private)
        try:
            async with self._client().post(
                target.url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.config.timeout_s),
            ) as answer:
                status = answer.status
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, AddressRefused):
                return self._refused(attempt, at, str(exc.os_error)), True
            metrics.child(metrics.WEBHOOK_DELIVERIES, "network_error").inc()
            return Delivery(attempt=attempt, at=at, error=f"no connection ({type(exc).__name__})"), False
        except TimeoutError:
            metrics.child(metrics.WEBHOOK_DELIVERIES, "timeout").inc()
            return Delivery(attempt=attempt, at=at, error=f"no answer within {self.config.timeout_s:g} s"), False
        except aiohttp.ClientError as exc:
            metrics.child(metrics.WEBHOOK_DELIVERIES, "network_error").inc()
            return Delivery(attempt=attempt, at=at, error=f"the exchange failed ({type(exc).__name__})"), False
        finally:
            _allow_private.reset(token)
        ok = 200 <= status < 300
        metrics.child(metrics.WEBHOOK_DELIVERIES, "ok" if ok else "status").inc()
        return Delivery(attempt=attempt, at=at, status=status), ok

    @staticmethod
    def _refused(attempt: int, at: float, why: str) -> Delivery:
        metrics.child(metrics.WEBHOOK_DELIVERIES, "refused").inc()
        metrics.child(metrics.WEBHOOK_FAILURES, "refused").inc()
        return Delivery(attempt=attempt, at=at, error=f"refused: {why}")


class _StartsTooLate(stop_base):
    """Stop when the next attempt, after its wait, would start more than ``seconds`` after the first began."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, retry_state: RetryCallState) -> bool:
        return (retry_state.seconds_since_start or 0.0) + retry_state.upcoming_sleep > self.seconds
