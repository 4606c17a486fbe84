"""The form of each image, decided here for both directions, and base64 carried as a slice.

An image arrives as base64 text, as bytes or as a URL (``GeneratedImage``); a client wants
base64 or a URL (``ResponseFormat``). ``conversion`` says what must happen to one image, and
the two places that act on it only ask:

- ``FETCH`` (URL → bytes): done by the adapter, inside the upstream call, so a failed download
  is a failed upstream attempt (retried, fallen back from, logged as ``upstream_attempt``);
- ``STORE`` (bytes or base64 → URL): done by ``gateway.request.steps.deliver`` through the image store;
- ``KEEP``: the image goes out as it came (base64 to base64 untouched, bytes encoded once).

Heavy answers: when a provider's answer carries base64 and its body is plain ASCII with no
escape, ``slicing_decoder`` reads it with every ``b64_json`` field as a ``msgspec.Raw``: the
JSON string (quotes included) as a view of the upstream's buffer, neither copied nor decoded.
The client's answer writes that slice as it is (``GeneratedImage.as_json_b64``), so base64
text goes from the upstream's buffer to the client's answer in one copy.

Input images (an edit's ``image`` and ``mask``, ``schemas.canonical.InputImage``) follow the
same rule the other way: each stays in the form the client sent it (a multipart file's bytes, or a
JSON dialect's base64 text) until a provider asks for the other. A provider whose wire takes
base64 in JSON (NebulaBlock's serverless ``image``/``mask``) gets ``as_b64``: the client's text as
it came, neither decoded nor encoded again; a provider that takes files, and the local engine, get
``as_bytes``: decoded once. Base64 text from a client is checked when it arrives (the alphabet and
the padding, over the whole text, and the image type from its first bytes decoded alone:
``schemas.dialect.b64_image``), so a bad one is the same 400 as before; admission reads its size
from the text's length. Where a request is written down (the worker protocol, the job queue) an
input goes in its held form; a dedup identity hashes its bytes, so one image is one identity
whatever form it came in.
"""

from __future__ import annotations

import enum
import functools
import types
import typing
from collections.abc import Sequence
from typing import Any

import msgspec

from schemas.canonical import GeneratedImage, ResponseFormat

__all__ = ["Conversion", "Pieces", "conversion", "encode_answer", "sliceable", "slicing_decoder"]

B64_FIELD = "b64_json"
_NULL = msgspec.Raw(b"null")
_QUOTE = ord('"')


class Conversion(enum.Enum):
    """What one image needs before the client's answer is written."""

    KEEP = "keep"
    FETCH = "fetch"  # URL → bytes, by the adapter within the upstream attempt
    STORE = "store"  # bytes/base64 → URL, by the gateway's image store


def conversion(image: GeneratedImage, wanted: ResponseFormat) -> Conversion:
    """The one rule: an upstream URL is fetched for a client that wants base64; an image held here
    is stored for a client that wants a URL; anything else is kept (an upstream URL goes out as is)."""
    if image.url is not None:
        return Conversion.FETCH if wanted is ResponseFormat.B64_JSON else Conversion.KEEP
    return Conversion.STORE if wanted is ResponseFormat.URL else Conversion.KEEP


def sliceable(body: Any) -> bool:
    """Whether a JSON body may be read with slices: plain ASCII and no escape anywhere, so each
    string's raw text is its value, and writing it back gives the bytes a decode and encode would."""
    data = body if isinstance(body, bytes | bytearray) else bytes(body)
    return data.isascii() and b"\\" not in data


def slicing_decoder(response_type: Any) -> msgspec.json.Decoder[Any] | None:
    """A decoder for ``response_type`` that reads every ``b64_json`` string as a slice; None when it
    has no such field. The types it decodes into subclass the dialect's own, so its mappings apply."""
    sliced = _sliced(response_type)
    return None if sliced is response_type else msgspec.json.Decoder(sliced)


@functools.cache
def _sliced(struct: Any) -> Any:
    """``struct``, or a subclass of it whose ``b64_json`` fields (at any depth) decode as ``msgspec.Raw``."""
    fields: list[tuple[Any, ...]] = []
    optional = False
    for field in msgspec.structs.fields(struct):
        if field.name == B64_FIELD and _is_text(field.type):
            optional = _is_optional(field.type)
            fields.append(_override(field, msgspec.Raw, _NULL if optional else msgspec.NODEFAULT))
            continue
        inner = _sliced_type(field.type)
        if inner is not field.type:
            fields.append(_override(field, inner, field.default))
    if not fields:
        return struct
    namespace = {"__post_init__": _check_text(optional)} if any(f[0] == B64_FIELD for f in fields) else {}
    return msgspec.defstruct(f"{struct.__name__}Sliced", fields, bases=(struct,), kw_only=True, namespace=namespace)


def _override(field: msgspec.structs.FieldInfo, kind: Any, default: Any) -> tuple[Any, ...]:
    if field.default_factory is not msgspec.NODEFAULT:
        return (field.name, kind, msgspec.field(default_factory=field.default_factory))
    if default is msgspec.NODEFAULT:
        return (field.name, kind)
    return (field.name, kind, default)


def _sliced_type(kind: Any) -> Any:
    """``kind`` with the Structs inside it (directly, in a list, in a union with None) sliced."""
    if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
        return _sliced(kind)
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is list and len(args) == 1:
        inner = _sliced_type(args[0])
        return kind if inner is args[0] else list[inner]  # type: ignore[valid-type]
    if origin in (typing.Union, types.UnionType):
        inners = tuple(_sliced_type(arg) for arg in args)
        return kind if inners == args else functools.reduce(lambda a, b: a | b, inners)
    return kind


def _is_text(kind: Any) -> bool:
    return kind is str or (_is_optional(kind) and set(typing.get_args(kind)) == {str, type(None)})


def _is_optional(kind: Any) -> bool:
    return typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in typing.get_args(kind)


def _check_text(optional: bool) -> Any:
    """A ``__post_init__`` holding a slice to the field's own type: a string (or null where allowed).
    Its ``ValueError`` is msgspec's ``ValidationError``, as a decode into ``str`` would raise."""

    def check(self: Any) -> None:
        raw = memoryview(getattr(self, B64_FIELD))
        if len(raw) and raw[0] == _QUOTE:
            return
        if optional and raw == b"null":
            setattr(self, B64_FIELD, None)
            return
        raise ValueError(f"Expected `str{' | null' if optional else ''}` at `{B64_FIELD}`")

    return check


# --------------------------------------------------------------------------- answers in pieces

PIECE_MIN = 64 * 1024  # a slice smaller than this is written into the answer (a copy costs less than a piece)
# What one ASGI message carries of a slice, copied into bytes as it is sent: below the size glibc maps on its
# own (gateway/memory.py), so each chunk reuses the heap memory the last one freed instead of faulting in
# fresh pages (16 MiB in 1 MiB chunks: 4,096 page faults, about 20 ms of CPU on these machines).
CHUNK = 256 * 1024


class Pieces:
    """A JSON answer as the text around its large base64 slices and the slices themselves.

    Nothing is joined: ``chunks`` copies each part into ``bytes`` (what ASGI carries) once, a
    chunk at a time, as the server takes it, so an answer in flight holds the provider's buffer
    and about one chunk, not a second copy of the whole answer.
    """

    __slots__ = ("parts", "size")

    def __init__(self, parts: list[bytes | memoryview]) -> None:
        self.parts = parts
        self.size = sum(len(part) for part in parts)

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        return b"".join(self.parts)

    def chunks(self) -> list[bytes | memoryview]:
        """The parts cut to at most ``CHUNK`` bytes (views: each becomes bytes as it is sent)."""
        out: list[bytes | memoryview] = []
        for part in self.parts:
            out.extend(part[i : i + CHUNK] for i in range(0, len(part), CHUNK))
        return out


def encode_answer(wire: Any, images: Sequence[GeneratedImage] | None = None) -> bytes | Pieces:
    """``wire`` (a client's answer Struct) as JSON: bytes, or ``Pieces`` when it holds large slices.

    ``images``: the canonical images the answer was made from, when known; when none of them holds
    a large slice the answer is encoded at once, without walking it (the light request's path).

    The slices are swapped for markers (``\\x00n\\x00``: msgspec escapes a NUL in any string, so
    none occurs elsewhere), the small rest is encoded, and the answer is cut at the markers.
    """
    if images is not None and not any(_large_slice(image.b64_json) for image in images):
        return msgspec.json.encode(wire)
    slices: list[msgspec.Raw] = []
    if not _mark(wire, slices):
        return msgspec.json.encode(wire)
    try:
        frame = msgspec.json.encode(wire)
    finally:
        _unmark(wire, slices)
    parts: list[bytes | memoryview] = []
    for n, text in enumerate(frame.split(b"\x00")):
        parts.append(text if n % 2 == 0 else memoryview(slices[int(text)]))
    return Pieces([part for part in parts if len(part)])


def _large_slice(value: Any) -> bool:
    return isinstance(value, msgspec.Raw) and len(value) >= PIECE_MIN


def _mark(value: Any, slices: list[msgspec.Raw]) -> bool:
    """Swap each large slice inside ``value`` (Structs and lists) for its marker; whether any was."""
    found = False
    if isinstance(value, list):
        for item in value:
            found = _mark(item, slices) or found
    elif isinstance(value, msgspec.Struct) and not value.__struct_config__.frozen:  # a frozen one keeps its slices
        for name in value.__struct_fields__:
            field = getattr(value, name)
            if _large_slice(field):
                setattr(value, name, msgspec.Raw(b"\x00%d\x00" % len(slices)))
                slices.append(field)
                found = True
            elif isinstance(field, list | msgspec.Struct):
                found = _mark(field, slices) or found
    return found


def _unmark(value: Any, slices: list[msgspec.Raw]) -> None:
    """Put the slices back where ``_mark`` took them (the wire Struct may be encoded again)."""
    if isinstance(value, list):
        for item in value:
            _unmark(item, slices)
    elif isinstance(value, msgspec.Struct):
        for name in value.__struct_fields__:
            field = getattr(value, name)
            if isinstance(field, msgspec.Raw) and len(field) < 32 and bytes(field)[:1] == b"\x00":
                setattr(value, name, slices[int(bytes(field)[1:-1])])
            elif isinstance(field, list | msgspec.Struct):
                _unmark(field, slices)
