"""Images kept for clients that asked for a URL while the backend gave bytes.

Each image sits in a directory for ``ttl_seconds`` behind an id that carries its expiry
and an HMAC signature: ids cannot be guessed, and an id is checked before the disk is
touched. Without a configured secret, one is generated on first start and kept in a file
beside the image directory (mode 0600), so URLs outlive a restart on the same machine.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

import structlog

__all__ = ["SECRET_FILE", "DirectoryImageStore", "kept_secret"]

log = structlog.get_logger("gateway.imagestore")

_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
_MEDIA_TYPES = {extension: media for media, extension in _EXTENSIONS.items()}
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


class DirectoryImageStore:
    """Signed, expiring image files under one directory."""

    def __init__(self, path: str | Path, ttl_seconds: int, secret: str = "") -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.ttl_seconds = ttl_seconds
        self._key = (secret or kept_secret(self.path)).encode()
        self._last_sweep = 0.0

    def _sign(self, token: str) -> str:
        return hmac.new(self._key, token.encode(), hashlib.sha256).hexdigest()[:32]

    async def put(self, data: bytes, media_type: str = "image/png") -> str:
        """Store ``data``; returns the file name clients fetch it by (``<id>.<ext>``)."""
        expires = int(time.time()) + self.ttl_seconds
        token = f"{expires:x}{secrets.token_urlsafe(18)}"
        name = f"{token}.{self._sign(token)}.{_EXTENSIONS.get(media_type, 'png')}"
        await asyncio.to_thread(self._write, name, data)
        return name

    def _write(self, name: str, data: bytes) -> None:
        partial = self.path / f".{name}.partial"
        partial.write_bytes(data)
        partial.replace(self.path / name)
        self._sweep_if_due()

    async def get(self, name: str) -> tuple[bytes, str] | None:
        """The bytes and media type of a stored image; None when the name is forged, unknown or expired."""
        parts = name.split(".")
        if len(parts) != 3 or not hmac.compare_digest(self._sign(parts[0]), parts[1]):
            return None
        try:
            expires = int(parts[0][:8], 16)
        except ValueError:
            return None
        if expires < time.time():
            return None
        try:
            data = await asyncio.to_thread((self.path / name).read_bytes)
        except OSError:
            return None
        return data, _MEDIA_TYPES.get(parts[2], "application/octet-stream")

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
