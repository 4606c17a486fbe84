"""Typed, bounds-checked reads of request fields for the emulators' validators, and
the checks they share (sizes, the content policy, uploaded and base64 images).
Every failure is a `ProviderError` with a canonical code of docs/errors.md.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import ProviderError
from .png import image_size

_FORBIDDEN = re.compile(r"\bforbidden\b", re.IGNORECASE)
_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Fields:
    """Typed, bounds-checked reads of request fields, raising `ProviderError`.

    Built from a JSON object or from a multipart form's text fields (`from_form`), in
    which case numbers arrive as strings and are parsed. A JSON null counts as absent.
    """

    def __init__(self, data: Mapping[str, Any], *, from_form: bool = False) -> None:
        self.data = data
        self.from_form = from_form

    def raw(self, name: str) -> Any:
        """The value of `name`, None when absent or null."""
        return self.data.get(name)

    def prompt(self, name: str = "prompt") -> str:
        """A required, non-blank prompt (else invalid_prompt)."""
        value = self.raw(name)
        if value is None:
            raise ProviderError("invalid_prompt", f"'{name}' is required", param=name, reason="Prompt is missing")
        if not isinstance(value, str) or not value.strip():
            raise ProviderError(
                "invalid_prompt",
                f"'{name}' must be a non-empty string",
                param=name,
                reason="Prompt is empty or invalid",
            )
        return value

    def string(self, name: str, default: str | None = None) -> str | None:
        """An optional string."""
        value = self.raw(name)
        if value is None:
            return default
        if not isinstance(value, str):
            raise ProviderError(
                "invalid_request", f"'{name}' must be a string", param=name, reason=f"{name} is not a string"
            )
        return value

    def text(self, name: str, default: str) -> str:
        """An optional string with a default."""
        value = self.string(name)
        return default if value is None else value

    def required_string(self, name: str) -> str:
        """A string that must be present (else invalid_request)."""
        value = self.string(name)
        if value is None:
            raise ProviderError("invalid_request", f"'{name}' is required", param=name, reason=f"{name} is missing")
        return value

    def choice(self, name: str, choices: Iterable[str], default: str) -> str:
        """A string that must be one of `choices` (else invalid_request)."""
        allowed = tuple(choices)
        value = self.text(name, default)
        if value not in allowed:
            raise ProviderError(
                "invalid_request",
                f"'{name}' must be one of {', '.join(allowed)}; got '{value}'",
                param=name,
                reason=f"Unsupported {name}",
            )
        return value

    def integer(self, name: str, default: int, lo: int, hi: int, *, canonical: str = "invalid_request") -> int:
        """An integer in [lo, hi]."""
        value = self.raw(name)
        if value is None:
            return default
        if self.from_form and isinstance(value, str):
            value = _parse_form_int(value)
        if not _is_int(value) or not lo <= value <= hi:
            raise ProviderError(
                canonical,
                f"'{name}' must be an integer between {lo} and {hi}",
                param=name,
                reason=f"{name} out of range",
            )
        return int(value)

    def number(self, name: str, default: float | None, lo: float, hi: float) -> float | None:
        """A number (int or float) in [lo, hi]."""
        value = self.raw(name)
        if value is None:
            return default
        if self.from_form and isinstance(value, str):
            value = _parse_form_float(value)
        if not _is_number(value) or not lo <= value <= hi:
            raise ProviderError(
                "invalid_request",
                f"'{name}' must be a number between {lo:g} and {hi:g}",
                param=name,
                reason=f"{name} out of range",
            )
        return float(value)


def _parse_form_int(text: str) -> int | str:
    try:
        return int(text.strip())
    except ValueError:
        return text


def _parse_form_float(text: str) -> float | str:
    try:
        return float(text.strip())
    except ValueError:
        return text


def parse_size(text: str, lo: int, hi: int) -> tuple[int, int] | None:
    """'WxH' with both sides in [lo, hi], else None."""
    match = _SIZE.match(text)
    if match is None:
        return None
    width, height = int(match.group(1)), int(match.group(2))
    return (width, height) if lo <= width <= hi and lo <= height <= hi else None


def check_content_policy(prompt: str) -> None:
    """The emulators' content policy: the word `forbidden` is refused."""
    if _FORBIDDEN.search(prompt):
        raise ProviderError(
            "content_policy",
            "Your request was rejected as it violates our content policy",
            param="prompt",
            reason="Contains prohibited content",
        )


def b64(data: bytes) -> str:
    """Standard base64 text of `data`."""
    return base64.b64encode(data).decode("ascii")


def decoded_image(text: Any, name: str) -> tuple[bytes, tuple[int, int]]:
    """Decode a base64 (or data-URL) image field; it must be a PNG or JPEG."""
    not_base64 = ProviderError("invalid_request", f"'{name}' must be base64 text", param=name, reason="Not base64")
    if not isinstance(text, str) or not text:
        raise not_base64
    payload = text.split(",", 1)[1] if text.startswith("data:") and "," in text else text
    try:
        data = base64.b64decode(payload, validate=True)
    except ValueError:
        raise not_base64 from None
    return data, require_image(data, name)


def require_image(data: bytes, name: str) -> tuple[int, int]:
    """The (width, height) of a PNG or JPEG, or an invalid_request error naming the field."""
    size = image_size(data)
    if size is None:
        message = f"'{name}' is not a valid PNG or JPEG image"
        raise ProviderError("invalid_request", message, param=name, reason="Not a PNG or JPEG image")
    return size
