"""Structured logs: one JSON line per event, every line of a request under its request id.

The request id comes from the client's ``X-Request-ID`` (when it is a sane token) or is
made here, and is echoed back on the answer. Keys are never logged; prompts only when
``server.log_prompts`` says so.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import msgspec
import structlog
from litestar.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RequestIdMiddleware", "configure_logging", "request_id"]

REQUEST_ID_HEADER = b"x-request-id"
_SANE_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
# Values under these names are never written, whatever logged them.
_SECRET_FIELDS = frozenset({"api_key", "authorization", "key", "token", "secret", "password"})


def _redact(log_prompts: bool) -> Any:
    def processor(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for field in _SECRET_FIELDS & event.keys():
            event[field] = "[redacted]"
        if not log_prompts and "prompt" in event:
            event["prompt"] = "[redacted]"
        return event

    return processor


def _serialize(event: Any, **_: Any) -> str:
    return msgspec.json.encode(event, enc_hook=str).decode()


def configure_logging(level: str = "info", log_prompts: bool = False) -> None:
    """JSON lines on standard output, with the request id of the request being served."""
    # httpx logs every request in plain text at INFO; the gateway's own upstream_attempt lines replace it.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact(log_prompts),
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(serializer=_serialize),
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


class RequestIdMiddleware:
    """Binds a request id to every log line of the request and echoes it in ``X-Request-ID``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given_id = request_id(scope)
        header = (REQUEST_ID_HEADER, given_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        tokens = structlog.contextvars.bind_contextvars(request_id=given_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            structlog.contextvars.reset_contextvars(**tokens)
