"""What a client is told when the upstream side of its request failed: the gateway's own words.

An upstream's failure reaches the router with an account meant for operators: the
upstream's own text (often about the gateway's key, not the client's), a client
library's exception name, the provider's name from the config. The router logs that
account under the request id; the client gets one sentence about its request and the
model it asked for, and a last one asking it to quote the request id.
"""

from __future__ import annotations

from collections.abc import Mapping

import structlog

from schemas.canonical import ErrorCode, FailureReason, GatewayError

__all__ = ["cooling_down", "current_request_id", "tell_client"]

_THE_UPSTREAM = "The upstream serving model {model!r}"

_SAID: Mapping[ErrorCode, str] = {
    ErrorCode.RATE_LIMITED: _THE_UPSTREAM + " is refusing more requests from this gateway for now; retry later.",
    ErrorCode.OVERLOADED: _THE_UPSTREAM + " is overloaded; retry later.",
    ErrorCode.UPSTREAM_TIMEOUT: _THE_UPSTREAM + " did not answer in time.",
    ErrorCode.UPSTREAM_ERROR: _THE_UPSTREAM + " failed to give a usable answer.",
    ErrorCode.INSUFFICIENT_QUOTA: "This gateway's quota at the upstream serving model {model!r} is used up.",
    ErrorCode.CONTENT_POLICY: _THE_UPSTREAM + " refused the prompt under its content policy.",
    # Refused by the upstream, or by the gateway encoding the request in the upstream's terms.
    ErrorCode.INVALID_REQUEST: "Model {model!r} cannot serve this request as given.",
    ErrorCode.INVALID_PROMPT: "Model {model!r} cannot take this prompt.",
    ErrorCode.INVALID_SIZE: "Model {model!r} cannot make images of the requested size.",
    ErrorCode.OPERATION_NOT_SUPPORTED: "Model {model!r} does not support this operation.",
    ErrorCode.MODEL_NOT_FOUND: _THE_UPSTREAM + " does not know the model this gateway asked it for.",
}
_FAILED = _THE_UPSTREAM + " failed."
_REASONS: Mapping[FailureReason, str] = {
    FailureReason.UPSTREAM_CREDENTIALS: (
        "This gateway's credentials for the upstream serving model {model!r} were refused; your own key was"
        " accepted, and the gateway's operators have to renew theirs."
    ),
    FailureReason.LOAD_SHED: _THE_UPSTREAM + " has more requests waiting than it holds; retry later.",
    FailureReason.MODEL_UNAVAILABLE: (
        "Model {model!r} is not available here at the moment: the gateway's operators have to install it; retry later."
    ),
}


def current_request_id() -> str | None:
    """The id of the request being served (bound by the request-id middleware), if any."""
    value = structlog.contextvars.get_contextvars().get("request_id")
    return value if isinstance(value, str) else None


def _quote_request_id(sentence: str) -> str:
    request_id = current_request_id()
    if request_id is None:
        return f"{sentence} Quote this answer's X-Request-ID if you report it."
    return f"{sentence} Quote request id {request_id} if you report it."


def tell_client(error: GatewayError, model: str) -> GatewayError:
    """Give an upstream failure the gateway's own message about ``model`` (in place; a public one is kept)."""
    if error.public:
        return error
    if error.reason is not None and error.reason in _REASONS:
        template = _REASONS[error.reason]
    else:
        template = _SAID.get(error.code, _FAILED)
    # The field, when known, stays in ``param``: the edge names it as the client's dialect does.
    error.message = _quote_request_id(template.format(model=model))
    error.args = (error.message,)
    error.public = True
    return error


def cooling_down(model: str, retry_after: float | None) -> GatewayError:
    """Every target of ``model`` is resting after failures: 503, with when to come back."""
    message = f"Every upstream serving model {model!r} is resting after repeated failures; retry later."
    return GatewayError(ErrorCode.OVERLOADED, _quote_request_id(message), retry_after=retry_after, public=True)
