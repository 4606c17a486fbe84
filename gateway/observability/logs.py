"""Structured logs: one JSON line per event, every line of a request under its request id.

The request id comes from the client's ``X-Request-ID`` (when it is a sane token) or is
made here, and is echoed back on the answer. Prompts are logged only when
``server.log_prompts`` says so.

Secrets never reach a line, whatever logged them: an exception is written as its type,
message and frames without their locals (a frame's locals hold the config and the request
headers), and the last step of every line removes each configured secret
(``config_secrets``), the key the current request presents (bound per request by
``bind_inbound_keys``) and anything that reads like a bearer token from the serialized text.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import unquote, urlsplit

import msgspec
import structlog
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from structlog.tracebacks import ExceptionDictTransformer

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

__all__ = [
    "OWN_REQUEST_ID",
    "RequestIdMiddleware",
    "bind_inbound_keys",
    "config_secrets",
    "configure_logging",
    "request_id",
    "unbind_inbound_keys",
]

REQUEST_ID_HEADER = b"x-request-id"
_SANE_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
# Values under these names are never written, whatever logged them.
_SECRET_FIELDS = frozenset({"api_key", "authorization", "key", "token", "secret", "password", "x_api_key"})
REDACTED = "[redacted]"
# Config fields whose values are secrets, wherever they are in the config.
_SECRET_CONFIG_FIELD = re.compile(r"(^|_)(api_key|secret|secret_access_key|password|token)$")
# The headers a client presents its key in (gateway.auth).
_KEY_HEADERS = (b"authorization", b"x-api-key")
# The key the request being served presents: every line written while serving it is scrubbed of it.
_inbound_keys: ContextVar[Secrets | None] = ContextVar("inbound_keys", default=None)
# A secret this short is scrubbed only where it stands alone, so that it cannot take every line apart.
_SHORT = 8
# A backstop for keys logged outside any request: whatever follows "Bearer".
_BEARER = re.compile(r"(?i)(bearer(?:\s|%20|\\[tn])+)[A-Za-z0-9._~+/=-]{8,}")


def _redact(log_prompts: bool) -> Any:
    def processor(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for field in _SECRET_FIELDS & event.keys():
            event[field] = "[redacted]"
        if not log_prompts and "prompt" in event:
            event["prompt"] = "[redacted]"
        return event

    return processor


# Fields the gateway writes from its own vocabulary, never from a client's text: a key that happens to read the
# same ("Bearer unauthorized") must not rewrite them.
_OWN_FIELDS = frozenset({"event", "level", "timestamp", "outcome", "dialect", "operation", "status", "logger"})


def _without_inbound_key(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The key the current request presents, replaced as a VALUE wherever it is, before the line is rendered.

    A key is text a client chose: removed from the rendered line it could take a line's JSON apart
    (``","level":"``) or rewrite the gateway's own fields; removed from the values, it changes only
    the strings that held it.
    """
    inbound = _inbound_keys.get()
    if inbound is None:
        return event
    for field, value in event.items():
        if field not in _OWN_FIELDS:
            event[field] = _scrubbed_value(value, inbound)
    return event


def _scrubbed_value(value: Any, secrets: Secrets) -> Any:
    if isinstance(value, str):
        return secrets.scrub(value)
    if isinstance(value, dict):
        return {key: _scrubbed_value(item, secrets) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrubbed_value(item, secrets) for item in value]
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value).decode("latin-1")
        return secrets.scrub(text) if any(form in text for form in secrets.forms) else value
    if isinstance(value, BaseException):
        return secrets.scrub(str(value))
    return value


def _serialize(event: Any, **_: Any) -> str:
    try:
        return msgspec.json.encode(event, enc_hook=str).decode()
    except (UnicodeEncodeError, TypeError, ValueError, RecursionError):
        pass  # a str msgspec cannot write (a lone surrogate) or a cycle: the line is still written
    try:
        return json.dumps(event, default=repr)
    except (TypeError, ValueError, RecursionError):
        return json.dumps({"event": "unserializable_log_line", "line": repr(event)})


def _written_forms(secret: str) -> Iterator[str]:
    """``secret`` as it may appear in a serialized line: raw, JSON-escaped, in a repr, URL-decoded."""
    for form in (secret, repr(secret)[1:-1], unquote(secret)):
        yield form
        yield msgspec.json.encode(form).decode()[1:-1]


def _secret_values(value: Any, name: str = "") -> Iterator[str]:
    """Every secret in a config (as builtins): values of secret-named fields and passwords in URLs."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _secret_values(item, str(key))
    elif isinstance(value, list):
        for item in value:
            yield from _secret_values(item, name)
    elif isinstance(value, str) and value:
        if _SECRET_CONFIG_FIELD.search(name):
            yield value
        elif "@" in value and "://" in value:
            try:
                password = urlsplit(value).password
            except ValueError:
                password = None
            if password:
                yield password


def config_secrets(config: GatewayConfig) -> list[str]:
    """The config's secret values (provider ``api_key``s, ``image_store.secret``, URL passwords)."""
    return sorted(set(_secret_values(msgspec.to_builtins(config))))


def inbound_keys(headers: Iterable[tuple[bytes, bytes]]) -> tuple[str, ...]:
    """What a client presents as its key in ``Authorization`` / ``X-API-Key`` (the whole value and the token)."""
    found: list[str] = []
    for name, raw in headers:
        if name.lower() in _KEY_HEADERS:
            value = raw.decode("latin-1").strip()
            token = value.partition(" ")[2].strip() if name.lower() == b"authorization" else ""
            found.extend(form for form in (value, token) if form)
    return tuple(found)


class Secrets(NamedTuple):
    """Secrets in every form a line may write them, and one pattern that replaces them all."""

    forms: tuple[str, ...]
    pattern: re.Pattern[str]

    def scrub(self, line: str) -> str:
        # Looking for each form costs far less than a pattern's search: the pattern runs only on a hit.
        for form in self.forms:
            if form in line:
                return self.pattern.sub(REDACTED, line)
        return line


def secrets_matcher(secrets: Iterable[str]) -> Secrets | None:
    """What finds ``secrets`` in a line; None for no secrets."""
    forms = {form for secret in secrets if secret for form in _written_forms(secret) if form}
    ordered = sorted(forms, key=len, reverse=True)  # a longer form first, so no piece of it stays
    alternatives = [
        re.escape(form) if len(form) >= _SHORT else rf"(?<![\w-]){re.escape(form)}(?![\w-])" for form in ordered
    ]
    # re caches the compiled pattern: a key presented again is not compiled again.
    return Secrets(tuple(ordered), re.compile("|".join(alternatives))) if ordered else None


# A client presents the same key request after request: its matcher is made once.
_key_matcher = functools.lru_cache(maxsize=256)(secrets_matcher)


def bind_inbound_keys(headers: Iterable[tuple[bytes, bytes]]) -> Token[Secrets | None]:
    """Remember the key a request presents (its ASGI headers), so that no line written while serving it carries it."""
    keys = inbound_keys(headers)
    return _inbound_keys.set(_key_matcher(keys) if keys else None)


def unbind_inbound_keys(token: Token[Secrets | None]) -> None:
    _inbound_keys.reset(token)


class _Scrubber:
    """The last step of every line: the serialized line without any secret in it.

    One compiled pattern of the configured secrets (in every form a line may write them),
    then one of the current request's key: passes over the line's text, never a walk of
    what was logged.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        self._configured = secrets_matcher(secrets)

    def __call__(self, _logger: Any, _name: str, line: Any) -> Any:
        # A rendered JSON line: the client's key was taken out of its values before rendering.
        return _scrub(line, self._configured, inbound_too=False) if isinstance(line, str) else line

    def scrub(self, line: str) -> str:
        return _scrub(line, self._configured)


def _scrub(line: str, configured: Secrets | None, inbound_too: bool = True) -> str:
    """``line`` without the configured secrets, a bearer token, and (``inbound_too``: a plain-text line, not a
    rendered JSON one, whose values ``_without_inbound_key`` has already seen) the current request's key."""
    if configured is not None:
        line = configured.scrub(line)
    inbound = _inbound_keys.get() if inbound_too else None
    if inbound is not None:
        line = inbound.scrub(line)
    if "earer" in line or "EARER" in line:  # the pattern is case-blind, so costly: only where it may match
        line = _BEARER.sub(r"\1" + REDACTED, line)
    return line


_RECORD_FACTORY = logging.getLogRecordFactory()


def _scrubbing_records(scrubber: _Scrubber) -> Callable[..., logging.LogRecord]:
    """A standard-library record factory whose message and traceback text are scrubbed as they are made."""

    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = _RECORD_FACTORY(*args, **kwargs)
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # arguments that do not fit the format: as the library wrote them
            message = f"{record.msg!r} % {record.args!r}"
        record.msg, record.args = scrubber.scrub(message), None
        if record.exc_info and record.exc_info[1] is not None:
            # Formatted here, without locals (the standard library never writes them), then scrubbed.
            record.exc_text = scrubber.scrub("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
        return record

    return make


def configure_logging(level: str = "info", log_prompts: bool = False, secrets: Iterable[str] = ()) -> None:
    """JSON lines on standard output, with the request id of the request being served.

    ``secrets`` (``config_secrets(config)``) are removed from every line, whatever field
    or nesting they are in.
    """
    # httpx logs every request in plain text at INFO; the gateway's own upstream_attempt lines replace it.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    scrubber = _Scrubber(secrets)
    # What other libraries log through the standard library (uvicorn's errors) is scrubbed too.
    logging.setLogRecordFactory(_scrubbing_records(scrubber))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact(log_prompts),
            # Type, message and frames; never the frames' locals (the config, the request's headers).
            structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False, use_rich=False)),
            _without_inbound_key,
            structlog.processors.JSONRenderer(serializer=_serialize),
            scrubber,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        # The process's real stdout: a log line never goes to a stream that someone replaced and closed.
        logger_factory=structlog.WriteLoggerFactory(file=sys.__stdout__),
        cache_logger_on_first_use=False,
    )


def request_id(scope: Scope) -> str:
    """The client's ``X-Request-ID`` when it is a sane token, else a new random one."""
    given = next((value for name, value in scope["headers"] if name == REQUEST_ID_HEADER), b"")
    return given.decode() if _SANE_ID.match(given) else os.urandom(16).hex()


# A route handler's ``opt`` key: the handler binds and echoes the request id itself (the dialect routes,
# gateway/request/pipeline.py), so RequestIdMiddleware steps aside.
OWN_REQUEST_ID = "own_request_id"


class RequestIdMiddleware:
    """Binds a request id to every log line of the request and echoes it in ``X-Request-ID``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["route_handler"].opt.get(OWN_REQUEST_ID):
            await self.app(scope, receive, send)
            return
        given_id = request_id(scope)
        header = (REQUEST_ID_HEADER, given_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        tokens = structlog.contextvars.bind_contextvars(request_id=given_id)
        keys = bind_inbound_keys(scope["headers"])
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            unbind_inbound_keys(keys)
            structlog.contextvars.reset_contextvars(**tokens)
