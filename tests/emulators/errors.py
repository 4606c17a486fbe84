"""The error-code table of docs/errors.md, as data the four emulators share, and the
error an emulator raises to answer in its provider's envelope.

Each row gives a canonical code, its HTTP status and how each provider spells it.
The emulators speak exactly these codes; nothing here depends on the project's code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class CodeRow:
    """One row of the table: a canonical code and its provider spellings."""

    canonical: str
    status: int
    melious: str  # Melious `error.code`
    openai_code: str  # Nebul `error.code` (its `error.type` follows from the status)
    block: str  # NebulaBlock's and Pomelo's `error.code`


# canonical             HTTP Melious                     Nebul                    NebulaBlock / Pomelo
_TABLE = """
invalid_request         400  VALIDATION_INVALID_VALUE    invalid_value            invalid_request
invalid_prompt          400  VALIDATION_INVALID_VALUE    invalid_prompt           invalid_prompt
invalid_size            400  VALIDATION_INVALID_VALUE    invalid_size             invalid_size
content_policy          400  POLICY_CONTENT_VIOLATION    content_policy_violation content_policy_violation
unauthorized            401  AUTH_INVALID_API_KEY        invalid_api_key          unauthorized
model_not_found         404  MODEL_NOT_FOUND             model_not_found          model_not_found
operation_not_supported 400  MODEL_OPERATION_UNSUPPORTED operation_not_supported  operation_not_supported
insufficient_quota      402  BILLING_INSUFFICIENT_ENERGY insufficient_quota       insufficient_quota
rate_limited            429  RATE_LIMIT_EXCEEDED         rate_limit_exceeded      rate_limit_exceeded
upstream_error          502  INFERENCE_PROVIDER_ERROR    upstream_error           upstream_error
upstream_timeout        504  INFERENCE_TIMEOUT           timeout                  timeout
overloaded              503  INFERENCE_OVERLOADED        overloaded               overloaded
internal                500  INTERNAL_ERROR              internal_error           internal_error
"""

TABLE: tuple[CodeRow, ...] = tuple(
    CodeRow(canonical, int(status), melious, openai_code, block)
    for canonical, status, melious, openai_code, block in (line.split() for line in _TABLE.strip().splitlines())
)
BY_CANONICAL: dict[str, CodeRow] = {row.canonical: row for row in TABLE}
BY_OPENAI_CODE: dict[str, CodeRow] = {row.openai_code: row for row in TABLE}

# Which canonical code a bare HTTP status stands for (used by faults given only a status).
_STATUS_TO_CANONICAL: dict[int, str] = {
    400: "invalid_request",
    401: "unauthorized",
    402: "insufficient_quota",
    403: "unauthorized",
    404: "model_not_found",
    408: "upstream_timeout",
    413: "invalid_request",
    429: "rate_limited",
    500: "internal",
    502: "upstream_error",
    503: "overloaded",
    504: "upstream_timeout",
}


def canonical_for_status(status: int) -> str:
    """The canonical code an HTTP status stands for; other 4xx/5xx fall back by class."""
    if status in _STATUS_TO_CANONICAL:
        return _STATUS_TO_CANONICAL[status]
    return "upstream_error" if status >= 500 else "invalid_request"


def openai_type(status: int) -> str:
    """Nebul's (OpenAI's) `error.type` for a table row's status."""
    if status in (401, 403):
        return "authentication_error"
    if status == 402:
        return "insufficient_quota"
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


class ProviderError(Exception):
    """An error to answer in the provider's envelope.

    `canonical` is a code of docs/errors.md; `code` overrides the provider's spelling
    (faults), `status` the HTTP status, `param` fills Nebul's `error.param` and
    `reason` NebulaBlock's `error.details.reason`.
    """

    def __init__(
        self,
        canonical: str,
        message: str,
        *,
        param: str | None = None,
        reason: str | None = None,
        status: int | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.canonical = canonical
        self.message = message
        self.param = param
        self.reason = reason
        self.status = status if status is not None else BY_CANONICAL[canonical].status
        self.code = code
        self.headers = dict(headers or {})
