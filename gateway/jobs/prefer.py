"""The ``Prefer`` request header (RFC 7240): ``respond-async`` and ``wait``, parsed by the grammar.

    Prefer     = 1#preference
    preference = token [ BWS "=" BWS word ] *( OWS ";" [ OWS parameter ] )
    parameter  = token [ BWS "=" BWS word ]
    word       = token / quoted-string

Several ``Prefer`` headers are one comma-separated list; names are case-insensitive; the
first instance of a preference counts (RFC 7240 section 2); preferences the gateway does not
know are ignored, as the RFC asks. A header that does not follow the grammar, or a ``wait``
that is not delta-seconds (digits), is the client's error: a 400 in its own dialect.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from schemas.canonical import ErrorCode, GatewayError

__all__ = ["Preferences", "parse_prefer", "prefer_headers"]

# tchar of RFC 9110 section 5.6.2
_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_WHITESPACE = " \t"


class Preferences(msgspec.Struct, frozen=True):
    """What the gateway acts on: answer asynchronously, and how long the client would wait for the result."""

    respond_async: bool = False
    wait: int | None = None  # seconds (delta-seconds), when the client gave one


def _malformed(detail: str) -> GatewayError:
    return GatewayError(
        ErrorCode.INVALID_REQUEST, f"malformed Prefer header (RFC 7240): {detail}", param="Prefer", public=True
    )


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0

    def done(self) -> bool:
        return self.at >= len(self.text)

    def peek(self) -> str:
        return self.text[self.at] if self.at < len(self.text) else ""

    def skip_space(self) -> None:
        while self.peek() and self.peek() in _WHITESPACE:
            self.at += 1

    def token(self) -> str:
        start = self.at
        while self.peek() and self.peek() in _TCHAR:
            self.at += 1
        if self.at == start:
            found = self.peek() or "the end of the header"
            raise _malformed(f"expected a token at position {start + 1}, found {found!r}")
        return self.text[start : self.at]

    def word(self) -> str:
        if self.peek() != '"':
            return self.token()
        self.at += 1
        chars: list[str] = []
        while True:
            char = self.peek()
            if not char:
                raise _malformed("a quoted value is not closed")
            self.at += 1
            if char == '"':
                return "".join(chars)
            if char == "\\":
                escaped = self.peek()
                if not escaped:
                    raise _malformed("a quoted value ends in a backslash")
                self.at += 1
                char = escaped
            elif (ord(char) < 0x20 and char != "\t") or ord(char) == 0x7F:
                raise _malformed("a control character in a quoted value")
            chars.append(char)

    def name_value(self) -> tuple[str, str | None]:
        name = self.token().lower()
        self.skip_space()
        if self.peek() != "=":
            return name, None
        self.at += 1
        self.skip_space()
        return name, self.word()


def _preferences(text: str) -> Iterable[tuple[str, str | None]]:
    """Each preference of one header value, as (lower-case name, value); parameters are read and dropped."""
    scanner = _Scanner(text)
    while True:
        scanner.skip_space()
        if scanner.peek() == ",":  # empty list elements are allowed (RFC 9110 section 5.6.1)
            scanner.at += 1
            continue
        if scanner.done():
            return
        yield scanner.name_value()
        scanner.skip_space()
        while scanner.peek() == ";":
            scanner.at += 1
            scanner.skip_space()
            if scanner.peek() and scanner.peek() not in ",;":
                scanner.name_value()
                scanner.skip_space()
        if not scanner.done() and scanner.peek() != ",":
            raise _malformed(f"unexpected {scanner.peek()!r} at position {scanner.at + 1}")


def parse_prefer(values: Iterable[str]) -> Preferences:
    """The preferences of every ``Prefer`` header value, in order; a ``GatewayError`` (400) when malformed."""
    seen: dict[str, str | None] = {}
    for value in values:
        for name, found in _preferences(value):
            seen.setdefault(name, found)  # the first instance of a preference counts
    wait: int | None = None
    if "wait" in seen:
        given = seen["wait"]
        if given is None or not given.isdigit() or not given.isascii():
            raise _malformed(f"wait must be a number of seconds (delta-seconds), not {given!r}")
        wait = int(given)
    return Preferences(respond_async="respond-async" in seen, wait=wait)


def prefer_headers(raw_headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """Every ``Prefer`` header value of an ASGI scope, in order (a repeated header is one list)."""
    return [value.decode("latin-1") for name, value in raw_headers if name.lower() == b"prefer"]
