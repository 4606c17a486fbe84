"""Test control of an emulator: the fault queue and the call log, their HTTP
endpoints under `/_emulator/`, and how a request body is summarised for the log.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import Any

import msgspec

from .wire import BodyError, FormData, Request, Response, UploadedFile, json_response

_LONG_STRING = 512  # strings longer than this are summarised in the call log


class Fault(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A misbehaviour queued for the next image requests.

    - `status`: answer this HTTP status with the provider's error envelope, its code
      being `code` when given, else the code docs/errors.md gives that status.
    - `body`: answer this raw text instead (with `content_type`, default
      application/json, and `status`, default 200), e.g. malformed JSON.
    - `delay`: seconds to wait first; with neither `status` nor `body` the request is
      then served normally.
    - `retry_after`: the `Retry-After` header to send with the answer.
    - `message`: the error message to put in the envelope.
    - `reset`: send the headers and half the body of the answer (normal, or the
      fault's own), then drop the connection (a reset mid-body).
    - `times`: how many requests the fault answers; None means until cleared.
    """

    status: int | None = None
    code: str | None = None
    message: str | None = None
    delay: float = 0.0
    retry_after: str | int | None = None
    body: str | None = None
    content_type: str | None = None
    reset: bool = False
    times: int | None = 1

    def __post_init__(self) -> None:
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError("fault status must be an HTTP status (100-599)")
        if self.delay < 0:
            raise ValueError("fault delay must be >= 0")
        if self.times is not None and self.times < 1:
            raise ValueError("fault times must be >= 1 or null")
        if isinstance(self.retry_after, int):
            self.retry_after = str(self.retry_after)


class Call(msgspec.Struct, kw_only=True):
    """One image request as the emulator saw it (the API key itself is never kept)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    content_type: str
    body_size: int
    body: Any  # JSON fields, or multipart fields with files as {filename, size, ...}
    authorized: bool
    time: float
    request_id: str | None = None  # the caller's X-Request-ID (so a test can match calls with its requests)
    status: int | None = None  # the status the emulator answered
    fault: bool = False  # whether a queued fault answered (or delayed) it


def _summarise(value: Any) -> Any:
    """A JSON value for the call log, with long strings replaced by their length and hash."""
    if isinstance(value, str) and len(value) > _LONG_STRING:
        return {"length": len(value), "sha256": hashlib.sha256(value.encode()).hexdigest()}
    if isinstance(value, dict):
        return {k: _summarise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_summarise(v) for v in value]
    return value


def _summarise_form(form: FormData) -> dict[str, Any]:
    """Multipart fields for the call log: files as name/size/type, a repeated field
    (or one named `x[]`) as a list."""
    grouped: dict[str, list[Any]] = {}
    for name, value in form.items:
        if isinstance(value, UploadedFile):
            entry: Any = {"filename": value.filename, "size": len(value.data), "content_type": value.content_type}
        else:
            entry = _summarise(value)
        grouped.setdefault(name, []).append(entry)
    return {k: v if len(v) > 1 or k.endswith("[]") else v[0] for k, v in grouped.items()}


def summarise_body(request: Request) -> Any:
    """What the call log keeps of a request body."""
    if not request.body:
        return None
    try:
        if request.media_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
            return _summarise_form(request.form())
        return _summarise(request.json())
    except BodyError:
        return {"unparsed_bytes": len(request.body)}


@dataclass
class _Queued:
    """A queued fault and how many more requests it answers (None: until cleared)."""

    fault: Fault
    left: int | None


class FaultQueue:
    """Faults waiting for image requests, first in first out; safe across threads."""

    def __init__(self) -> None:
        self._entries: list[_Queued] = []
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> None:
        """Queue `fault` for its `times` next requests."""
        with self._lock:
            self._entries.append(_Queued(fault, fault.times))

    def clear(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            self._entries.clear()

    def pending(self) -> list[Fault]:
        """The faults still queued."""
        with self._lock:
            return [entry.fault for entry in self._entries]

    def take(self) -> Fault | None:
        """The fault that answers this request, using up one of its times."""
        with self._lock:
            if not self._entries:
                return None
            entry = self._entries[0]
            if entry.left is not None:
                entry.left -= 1
                if entry.left <= 0:
                    self._entries.pop(0)
            return entry.fault


class CallLog:
    """The image requests an emulator received, in order; safe across threads."""

    def __init__(self) -> None:
        self._calls: list[Call] = []
        self._lock = threading.Lock()

    def record(self, call: Call) -> None:
        """Append a call."""
        with self._lock:
            self._calls.append(call)

    def snapshot(self) -> list[Call]:
        """A copy of the list."""
        with self._lock:
            return list(self._calls)

    def clear(self) -> None:
        """Forget every call."""
        with self._lock:
            self._calls.clear()


def control_response(faults: FaultQueue, calls: CallLog, provider: str, request: Request) -> Response:
    """Answer `/_emulator/{faults,calls,reset,health}`, for tests driving a separate process."""
    route = (request.method, request.path)
    if route == ("POST", "/_emulator/faults"):
        return _post_faults(faults, request)
    if route == ("GET", "/_emulator/faults"):
        return json_response(msgspec.to_builtins(faults.pending()))
    if route == ("GET", "/_emulator/calls"):
        return json_response(msgspec.to_builtins(calls.snapshot()))
    if route == ("GET", "/_emulator/health"):
        return json_response({"ok": True, "provider": provider})
    if route == ("DELETE", "/_emulator/faults"):
        faults.clear()
    elif route == ("DELETE", "/_emulator/calls"):
        calls.clear()
    elif route == ("POST", "/_emulator/reset"):
        faults.clear()
        calls.clear()
    else:
        return json_response({"error": f"no control route {request.method} {request.path}"}, 404)
    return json_response({"ok": True})


def _post_faults(faults: FaultQueue, request: Request) -> Response:
    """Queue one fault (a JSON object) or several (a JSON array)."""
    try:
        payload = msgspec.json.decode(request.body)
        items = payload if isinstance(payload, list) else [payload]
        new = [msgspec.convert(item, Fault) for item in items]
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        return json_response({"error": f"bad fault: {exc}"}, 400)
    for fault in new:
        faults.add(fault)
    return json_response({"ok": True, "queued": len(faults.pending())})
