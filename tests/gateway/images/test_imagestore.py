"""The directory image store: signed, unguessable, expiring ids."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.images.store import SECRET_FILE, DirectoryImageStore

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


async def test_put_then_get(tmp_path: Path) -> None:
    store = DirectoryImageStore(tmp_path, ttl_seconds=3600, secret="s")
    name = await store.put(PNG, "image/png")
    assert name.endswith(".png")
    assert await store.get(name) == (PNG, "image/png")


async def test_ids_are_unguessable_and_distinct(tmp_path: Path) -> None:
    store = DirectoryImageStore(tmp_path, ttl_seconds=3600)
    names = {await store.put(PNG) for _ in range(20)}
    assert len(names) == 20
    assert all(len(name.split(".")[0]) >= 30 for name in names)


async def test_forged_or_foreign_ids_are_refused(tmp_path: Path) -> None:
    store = DirectoryImageStore(tmp_path, ttl_seconds=3600, secret="one")
    name = await store.put(PNG)
    token, signature, ext = name.split(".")
    assert await store.get(f"{token}.{'0' * len(signature)}.{ext}") is None
    assert await store.get("../../etc/passwd") is None
    other = DirectoryImageStore(tmp_path, ttl_seconds=3600, secret="two")
    assert await other.get(name) is None


async def test_shared_secret_lets_another_replica_read(tmp_path: Path) -> None:
    name = await DirectoryImageStore(tmp_path, 3600, secret="shared").put(PNG)
    assert await DirectoryImageStore(tmp_path, 3600, secret="shared").get(name) == (PNG, "image/png")


async def test_expired_images_are_gone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = DirectoryImageStore(tmp_path, ttl_seconds=1, secret="s")
    name = await store.put(PNG)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 5)
    assert await store.get(name) is None
    store._last_sweep = 0.0
    await store.put(PNG)  # a write sweeps expired files from the directory
    assert not (tmp_path / name).exists()


async def test_without_a_secret_one_is_kept_beside_the_directory(tmp_path: Path) -> None:
    """No configured secret: the one made on first start is kept (0600) and read back by the next store."""
    images = tmp_path / "var" / "images"
    name = await DirectoryImageStore(images, 3600).put(PNG)
    kept = tmp_path / "var" / SECRET_FILE
    assert kept.stat().st_mode & 0o777 == 0o600
    assert len(kept.read_text().strip()) == 64
    assert await DirectoryImageStore(images, 3600).get(name) == (PNG, "image/png")
    assert {path.name for path in (tmp_path / "var").iterdir()} == {SECRET_FILE, "images"}  # no partial file left
