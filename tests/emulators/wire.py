"""HTTP plumbing for the emulators: the request and response objects and a small
multipart/form-data parser, on plain ASGI so every byte on the wire is ours to choose.
"""

from __future__ import annotations

import email.message
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON_DECODER = msgspec.json.Decoder()
_JSON_ENCODER = msgspec.json.Encoder()


class BodyError(ValueError):
    """The request body could not be read as what the endpoint expects."""


class BodyTooLarge(Exception):
    """The request body is over the emulator's limit."""


class ClientGone(Exception):
    """The client disconnected before its body arrived."""


@dataclass(frozen=True)
class UploadedFile:
    """One file part of a multipart body."""

    field: str
    filename: str
    content_type: str | None
    data: bytes


@dataclass
class FormData:
    """The parts of a multipart body, in order; a field may repeat."""

    items: list[tuple[str, str | UploadedFile]] = field(default_factory=list)

    def text(self, name: str) -> str | None:
        """The first text value of `name`, or None."""
        for key, value in self.items:
            if key == name and isinstance(value, str):
                return value
        return None

    def files(self, *names: str) -> list[UploadedFile]:
        """Every file sent under any of `names`, in order."""
        return [v for k, v in self.items if k in names and isinstance(v, UploadedFile)]

    def texts(self) -> dict[str, str]:
        """The text fields as a mapping (the first value of a repeated field wins)."""
        out: dict[str, str] = {}
        for key, value in self.items:
            if isinstance(value, str):
                out.setdefault(key, value)
        return out


def _header_params(header_name: str, value: str) -> email.message.Message:
    """Parse a header with parameters (Content-Type, Content-Disposition) via the stdlib."""
    msg = email.message.Message()
    msg[header_name] = value
    return msg


def parse_multipart(body: bytes, content_type: str) -> FormData:
    """Split a multipart/form-data body into its fields and files."""
    boundary = _header_params("content-type", content_type).get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise BodyError("multipart body without a boundary")
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    sections = (b"\r\n" + body).split(delimiter)
    if len(sections) < 2:
        raise BodyError("multipart body has no parts")
    form = FormData()
    for section in sections[1:]:
        if section.startswith(b"--"):  # the closing delimiter
            return form
        form.items.append(_parse_part(section))
    raise BodyError("multipart body is not terminated")


def _parse_part(section: bytes) -> tuple[str, str | UploadedFile]:
    """One part: its headers, then a blank line, then the content."""
    head, sep, content = section.lstrip(b" \t").removeprefix(b"\r\n").partition(b"\r\n\r\n")
    if not sep:
        raise BodyError("multipart part without headers")
    headers: dict[str, str] = {}
    for line in head.decode("utf-8", "replace").split("\r\n"):
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    disposition = _header_params("content-disposition", headers.get("content-disposition", ""))
    name = disposition.get_param("name", header="content-disposition")
    if not isinstance(name, str):
        raise BodyError("multipart part without a name")
    if "filename" not in headers.get("content-disposition", ""):
        return name, content.decode("utf-8", "replace")
    return name, UploadedFile(name, disposition.get_filename() or "", headers.get("content-type"), content)


@dataclass
class Request:
    """An HTTP request with its whole body read."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    scheme: str = "http"
    _json: Any = field(default=None, repr=False)
    _form: FormData | None = field(default=None, repr=False)

    @classmethod
    async def read(cls, scope: Scope, receive: Receive, limit: int) -> Request:
        """Build the request from an ASGI scope, reading at most `limit` body bytes."""
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope.get("headers", []):
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        request = cls(
            method=scope["method"].upper(),
            path=scope["path"],
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=headers,
            body=b"",
            scheme=scope.get("scheme", "http"),
        )
        request.body = await _read_body(receive, limit)
        return request

    @property
    def media_type(self) -> str:
        """The content type without its parameters, lower-cased ('' when absent)."""
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    def json(self) -> Any:
        """The body decoded as JSON (decoded once, then cached)."""
        if self._json is None:
            if not self.body.strip():
                raise BodyError("request body is empty; a JSON object is expected")
            try:
                self._json = _JSON_DECODER.decode(self.body)
            except msgspec.DecodeError as exc:
                raise BodyError(f"request body is not valid JSON: {exc}") from None
        return self._json

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object, or a BodyError."""
        value = self.json()
        if not isinstance(value, dict):
            raise BodyError("request body must be a JSON object")
        return value

    def form(self) -> FormData:
        """The body as form fields: multipart/form-data, or a urlencoded form (which
        can carry no files); parsed once, then cached."""
        if self._form is None:
            if self.media_type == "multipart/form-data":
                self._form = parse_multipart(self.body, self.headers["content-type"])
            elif self.media_type == "application/x-www-form-urlencoded":
                pairs = urllib.parse.parse_qsl(self.body.decode("utf-8", "replace"), keep_blank_values=True)
                self._form = FormData(list(pairs))
            else:
                raise BodyError("request body must be multipart/form-data")
        return self._form


async def _read_body(receive: Receive, limit: int) -> bytes:
    """Collect the body chunks, refusing more than `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge()
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


@dataclass
class Response:
    """An HTTP response to send whole."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    async def send(self, send: Send) -> None:
        """Write the response to an ASGI `send`."""
        headers = [
            (b"content-type", self.content_type.encode("latin-1")),
            (b"content-length", str(len(self.body)).encode("latin-1")),
        ]
        headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


@dataclass
class TruncatedResponse(Response):
    """A response that announces its whole length, sends half the body, then stops (the connection drops)."""

    async def send(self, send: Send) -> None:
        headers = [
            (b"content-type", self.content_type.encode("latin-1")),
            (b"content-length", str(len(self.body)).encode("latin-1")),
        ]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body[: len(self.body) // 2], "more_body": True})
        raise ConnectionResetError("emulated reset mid-body")


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response (encoded with msgspec, keys in the order given)."""
    return Response(status, _JSON_ENCODER.encode(payload), "application/json", dict(headers or {}))
