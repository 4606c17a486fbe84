"""The worker's HTTP protocol, shared by the worker server and the gateway's ``local`` adapter.

``POST /v1/generate`` carries the canonical ``ImageRequest`` as JSON (bytes as base64,
which msgspec does itself) and answers the canonical ``ImageResult``; a failure answers
``{"code": <ErrorCode value>, "message": ..., "param": ...}`` with the code's status (and
``reason``, a ``FailureReason`` value, where the error has one: a full queue is ``load_shed``).
The result carries the energy the worker measured for the request (``ImageResult.energy``),
which the gateway turns into carbon and water with its own site factors (gateway/observability/energy.py).
Imports only msgspec and the schemas: a gateway without torch speaks it too.
"""

from __future__ import annotations

import msgspec

from schemas.canonical import (
    ErrorCode,
    FailureReason,
    GatewayError,
    ImageRequest,
    ImageResult,
    decode_hook,
    encode_hook,
)
from schemas.dialect import Buffer, Endpoint, ErrorTable, bounded_retry_after

__all__ = [
    "ERRORS",
    "GENERATE",
    "GENERATE_PATH",
    "HEALTH_PATH",
    "STATS_PATH",
    "ErrorBody",
    "decode_error",
    "decode_request",
    "decode_result",
    "encode_error",
    "encode_request",
    "encode_result",
]

GENERATE_PATH = "/v1/generate"
HEALTH_PATH = "/health"
STATS_PATH = "/stats"


class ErrorBody(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A worker's failure, in the canonical taxonomy."""

    code: str
    message: str
    param: str | None = None
    retry_after: float | None = None
    # A ``FailureReason`` value (``load_shed``, ``model_unavailable``); any other is left out.
    reason: str | None = None


_encoder = msgspec.json.Encoder(enc_hook=encode_hook)
_request_decoder = msgspec.json.Decoder(ImageRequest, dec_hook=decode_hook)
_result_decoder = msgspec.json.Decoder(ImageResult)
_error_decoder = msgspec.json.Decoder(ErrorBody)
_CODES = {code.value: code for code in ErrorCode}
# The reasons a worker may give (what its engine raises); any other is left out.
_REASONS = {reason.value: reason for reason in (FailureReason.LOAD_SHED, FailureReason.MODEL_UNAVAILABLE)}


def encode_request(request: ImageRequest) -> bytes:
    return _encoder.encode(request)


def decode_request(body: bytes) -> ImageRequest:
    """The canonical request in ``body``; ``invalid_request`` naming the field when it is not one."""
    try:
        return _request_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise GatewayError(ErrorCode.INVALID_REQUEST, f"not a canonical image request: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise GatewayError(ErrorCode.INVALID_REQUEST, f"request body is not valid JSON: {exc}") from exc


def encode_result(result: ImageResult) -> bytes:
    return _encoder.encode(result)


def decode_result(body: bytes | bytearray) -> ImageResult:
    return _result_decoder.decode(body)


def encode_error(error: GatewayError) -> bytes:
    reason = error.reason.value if error.reason is not None else None
    return _encoder.encode(
        ErrorBody(
            code=error.code.value,
            message=error.message,
            param=error.param,
            retry_after=error.retry_after,
            reason=reason,
        )
    )


def decode_error(status: int, body: Buffer) -> GatewayError:
    """A worker's error answer → the canonical error; a body that is not one is ``upstream_error``."""
    try:
        wire = _error_decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return GatewayError(ErrorCode.UPSTREAM_ERROR, f"local worker answered {status} without an error body")
    code = _CODES.get(wire.code, ErrorCode.UPSTREAM_ERROR)
    reason = _REASONS.get(wire.reason) if wire.reason is not None else None
    return GatewayError(
        code, wire.message, param=wire.param, retry_after=bounded_retry_after(wire.retry_after), reason=reason
    )


# --- the worker as a provider: an endpoint and an error table like any dialect's ---


class Generate(Endpoint[ImageRequest, ImageResult]):
    """``POST /v1/generate``: the canonical request out, the canonical result back.

    The gateway's ``local`` adapter reaches remote workers through the same HTTP adapter as
    every provider, with this endpoint and ``ERRORS``.
    """

    dialect = "worker"
    path = GENERATE_PATH
    max_n_per_call = 1 << 16  # the worker batches n images itself: never split
    request_type = ImageRequest
    response_type = ImageResult

    def to_canonical(self, wire: ImageRequest) -> ImageRequest:
        return wire

    def encode_result(self, result: ImageResult, request: ImageRequest) -> ImageResult:
        return result

    def from_canonical(self, request: ImageRequest) -> ImageRequest:
        return request

    def decode_result(self, wire: ImageResult, request: ImageRequest) -> ImageResult:
        return wire


class WorkerErrors(ErrorTable):
    """A worker's failures are already canonical: ``ErrorBody`` both ways."""

    def render(self, error: GatewayError) -> bytes:
        return encode_error(error)

    def parse(self, status: int, body: Buffer, retry_after: float | None = None) -> GatewayError:
        error = decode_error(status, body)
        if error.retry_after is None:
            error.retry_after = retry_after
        return error


GENERATE = Generate()
ERRORS = WorkerErrors()
