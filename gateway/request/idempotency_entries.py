"""What an ``Idempotency-Key`` is and what is kept under it: the header's grammar, the fingerprint of
"the same request", and the entry (an answer, its images, or a job) a repeat is answered from.
``gateway.request.idempotency`` keeps and finds them."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from schemas.canonical import ErrorCode, GatewayError, ImageRequest, ImageResult, InputImage

__all__ = ["DONE", "HEADER", "REPLAYED_HEADER", "RUNNING", "Entry", "KeptImage", "Stored", "fingerprint", "parse_key"]

HEADER = b"idempotency-key"
REPLAYED_HEADER = "Idempotent-Replayed"
RUNNING: Literal["running"] = "running"
DONE: Literal["done"] = "done"


class KeptImage(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str | None = None  # in the image store
    url: str | None = None  # an upstream URL, passed on as it came
    media_type: str = "image/png"
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    revised_prompt: str | None = None


class Entry(msgspec.Struct, kw_only=True, omit_defaults=True):
    fingerprint: str
    owner: str
    state: Literal["running", "done"] = RUNNING
    status: int = 200
    headers: dict[str, str] = {}
    result: ImageResult | None = None  # without its images
    images: list[KeptImage] = []
    job: str | None = None  # a job submission's answer: the job's id
    body: str | None = None  # a job submission's answer body (small JSON)


@dataclass
class Stored:
    """A kept answer, for a repeat."""

    slot: str
    entry: Entry


def _input_bytes(obj: Any) -> bytes:
    if isinstance(obj, InputImage):
        return obj.as_bytes()
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def _bad_key(message: str) -> GatewayError:
    return GatewayError(ErrorCode.INVALID_REQUEST, message, public=True)


def parse_key(headers: Iterable[tuple[bytes, bytes]], max_chars: int) -> str | None:
    """The ``Idempotency-Key`` of a request, None without one; a malformed one is a 400."""
    values = [value for name, value in headers if name.lower() == HEADER]
    if not values:
        return None
    if len(values) > 1:
        raise _bad_key("send one Idempotency-Key header")
    raw = values[0].strip(b" \t")
    if raw.startswith(b'"'):  # an sf-string: printable ASCII, with \" and \\ escaped, and nothing after it
        chars: list[int] = []
        i = 1
        while i < len(raw) and raw[i] != 0x22:
            c = raw[i]
            if c == 0x5C:
                i += 1
                if i >= len(raw) or raw[i] not in (0x22, 0x5C):
                    raise _bad_key("Idempotency-Key must be a Structured Field string: a bad escape")
                c = raw[i]
            elif not 0x20 <= c <= 0x7E:
                raise _bad_key("Idempotency-Key must be printable ASCII")
            chars.append(c)
            i += 1
        if i >= len(raw):
            raise _bad_key("Idempotency-Key must be a Structured Field string: no closing quote")
        if i != len(raw) - 1:
            raise _bad_key("Idempotency-Key must be one Structured Field string, without parameters")
        key = bytes(chars).decode("ascii")
    else:  # a bare key (Stripe's form): visible ASCII, no quote, comma or backslash
        if any(not 0x21 <= c <= 0x7E or c in b'",;\\' for c in raw):
            raise _bad_key('Idempotency-Key must be a Structured Field string ("...") of printable ASCII')
        key = raw.decode("ascii")
    if not key:
        raise _bad_key("Idempotency-Key is empty")
    if len(key) > max_chars:
        raise _bad_key(f"Idempotency-Key is longer than {max_chars} characters")
    return key


def fingerprint(route: str, canonical: ImageRequest, job: bool) -> str:
    """The identity of "the same request" under one key."""
    try:
        encoded = msgspec.msgpack.encode(canonical, enc_hook=_input_bytes)
    except OverflowError:  # a seed past 64 bits
        encoded = msgspec.json.encode(canonical, enc_hook=_input_bytes)
    digest = hashlib.sha256(f"{route}\x00{'job' if job else 'call'}\x00".encode())
    digest.update(encoded)
    return digest.hexdigest()
