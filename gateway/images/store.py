"""Images kept for clients that asked for a URL while the backend gave bytes.

One interface (``ImageStore``), two places: a directory (``DirectoryImageStore``) and an
S3-compatible bucket (``gateway.s3store.S3ImageStore``). Each image is stored under a name
that carries its expiry and an HMAC signature (``SignedNames``): names cannot be guessed,
and a name is checked before the disk or the bucket is touched.
The directory store without a configured secret generates one on first start and keeps it in a
file beside the image directory (mode 0600), so its URLs outlive a restart on the same machine.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
import secrets
import time
from pathlib import Path
from typing import Protocol

import structlog

__all__ = [
    "SECRET_FILE",
    "DirectoryImageStore",
    "ImageStore",
    "SignedNames",
    "StoreUnavailable",
    "gateway_url",
    "kept_secret",
]

log = structlog.get_logger("gateway.imagestore")

_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
_MEDIA_TYPES = {extension: media for media, extension in _EXTENSIONS.items()}
# What SignedNames.new writes: 8 hex digits of expiry and 24 URL-safe characters, 32 hex of HMAC, a known extension.
_SIGNED_NAME = re.compile(
    r"(?P<token>[0-9a-f]{8}[A-Za-z0-9_-]{24})\.(?P<mac>[0-9a-f]{32})\.(?P<ext>" + "|".join(_MEDIA_TYPES) + ")"
)
SWEEP_INTERVAL_S = 60.0
SECRET_FILE = "image-store.secret"  # beside the image directory: var/image-store.secret for var/images


def kept_secret(store: Path) -> str:
    """The signing secret kept beside ``store``, made on first use (mode 0600).

    Written to a temporary file and linked into place, so that server workers starting
    together all end up with the one secret. Unwritable: a per-process secret, logged.
    """
    path = store.resolve().parent / SECRET_FILE
    try:
        return _read_or_create(path)
    except OSError as exc:
        log.warning(
            "image_store_secret_not_kept",
            path=str(path),
            error=type(exc).__name__,
            detail="image URLs will not survive a restart; set image_store.secret",
        )
        return secrets.token_hex(32)


def _read_or_create(path: Path) -> str:
    if not path.exists():
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_hex(32) + "\n")
        try:
            os.link(partial, path)  # fails if another process got there first: theirs is kept
        except FileExistsError:
            pass
        finally:
            partial.unlink(missing_ok=True)
    secret = path.read_text(encoding="ascii").strip()
    if not secret:
        raise OSError(f"{path} is empty")
    return secret


class StoreUnavailable(Exception):
    """The store cannot be used (bucket missing, credentials refused, storage unreachable).

    The message says which, in words an operator can act on, and holds no secret; ``public`` is what the
    public ``/ready`` may show when the message names something of the server's own (a path).
    """

    def __init__(self, message: str, public: str | None = None) -> None:
        super().__init__(message)
        self.public = public or message


class ImageStore(Protocol):
    """Where images wait for the clients that asked for a URL."""

    ttl_seconds: int

    async def put(self, data: bytes, media_type: str = "image/png", ttl_seconds: int | None = None) -> str:
        """Store ``data`` for ``ttl_seconds`` (the store's own TTL when None); returns its name. Raises
        ``StoreUnavailable`` when the store cannot take it."""
        ...

    def url(self, name: str, base_url: str) -> str:
        """The URL a client fetches ``name`` at; ``base_url`` is the gateway's own (for its ``/images/`` route)."""
        ...

    async def get(self, name: str) -> tuple[bytes, str] | None:
        """The bytes and media type of a stored image; None when the name is forged, unknown or expired."""
        ...

    async def check(self) -> None:
        """Raise ``StoreUnavailable`` when the store cannot be used (at start and in ``/ready``)."""
        ...

    async def aclose(self) -> None: ...


def gateway_url(name: str, base_url: str) -> str:
    """The gateway's own URL for a stored image (its ``/images/{name}`` route)."""
    return f"{base_url}/images/{name}"


class SignedNames:
    """Names ``<expiry hex><random>.<hmac>.<ext>``: unguessable, expiring, checked without I/O."""

    def __init__(self, ttl_seconds: int, secret: str) -> None:
        self.ttl_seconds = ttl_seconds
        self._key = (secret or secrets.token_hex(32)).encode()

    def _sign(self, token: str) -> str:
        return hmac.new(self._key, token.encode(), hashlib.sha256).hexdigest()[:32]

    def new(self, media_type: str, ttl_seconds: int | None = None) -> str:
        """A fresh name, valid for ``ttl_seconds`` (the store's TTL when None): the expiry is in the name."""
        expires = int(time.time()) + (self.ttl_seconds if ttl_seconds is None else ttl_seconds)
        token = f"{expires:x}{secrets.token_urlsafe(18)}"
        return f"{token}.{self._sign(token)}.{_EXTENSIONS.get(media_type, 'png')}"

    def media_type(self, name: str) -> str | None:
        """The media type of a valid, unexpired name; None for a forged, foreign, expired or odd one.

        Only a name exactly as ``new`` writes them passes (nothing before, after or inside it: no NUL, no
        path separator, no other extension), so what reaches the storage is always a name made here.
        """
        match = _SIGNED_NAME.fullmatch(name)
        if match is None or not hmac.compare_digest(self._sign(match["token"]), match["mac"]):
            return None
        if int(match["token"][:8], 16) < time.time():
            return None
        return _MEDIA_TYPES[match["ext"]]


class DirectoryImageStore:
    """Signed, expiring image files under one directory (replicas must share it, and the secret)."""

    def __init__(self, path: str | Path, ttl_seconds: int, secret: str = "") -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.ttl_seconds = ttl_seconds
        self.names = SignedNames(ttl_seconds, secret or kept_secret(self.path))
        self._last_sweep = 0.0

    async def put(self, data: bytes, media_type: str = "image/png", ttl_seconds: int | None = None) -> str:
        """Store ``data``; returns the file name clients fetch it by (``<id>.<ext>``), whose expiry the sweep reads."""
        name = self.names.new(media_type, ttl_seconds)
        await asyncio.to_thread(self._write, name, data)
        return name

    def url(self, name: str, base_url: str) -> str:
        return gateway_url(name, base_url)

    def _write(self, name: str, data: bytes) -> None:
        partial = self.path / f".{name}.partial"
        partial.write_bytes(data)
        partial.replace(self.path / name)
        self._sweep_if_due()

    async def get(self, name: str) -> tuple[bytes, str] | None:
        """The bytes and media type of a stored image; None when the name is forged, unknown or expired."""
        media_type = self.names.media_type(name)
        if media_type is None:
            return None
        try:
            data = await asyncio.to_thread((self.path / name).read_bytes)
        except OSError:
            return None
        return data, media_type

    async def check(self) -> None:
        """The directory exists (it was made at start); nothing else can be known without a write."""
        if not self.path.is_dir():
            raise StoreUnavailable(
                f"image_store.path {str(self.path)!r} is not a directory",
                public="image_store.path is not a directory (the gateway's log names it)",
            )

    async def aclose(self) -> None:
        return None

    def _sweep_if_due(self) -> None:
        """Delete expired files, at most once a minute (runs in the writer's thread)."""
        now = time.time()
        if now - self._last_sweep < SWEEP_INTERVAL_S:
            return
        self._last_sweep = now
        for file in self.path.iterdir():
            try:
                if int(file.name[:8], 16) < now:
                    file.unlink(missing_ok=True)
            except ValueError:
                continue
