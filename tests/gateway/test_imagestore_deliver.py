"""``deliver``: one store call per image, all of a request's images at once, none for base64 clients."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.images.store import DirectoryImageStore, StoreUnavailable
from gateway.request.steps import deliver
from schemas.canonical import ErrorCode, GatewayError, GeneratedImage, ImageResult, ResponseFormat

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


class GatedStore(DirectoryImageStore):
    """A real directory store whose puts wait until ``expected`` of them are in flight together:
    puts made one after another never get there (the test's wait_for fails instead)."""

    def __init__(self, path: Path, expected: int) -> None:
        super().__init__(path, 3600, secret="s")
        self.expected = expected
        self.puts = 0
        self.all_in = asyncio.Event()

    async def put(self, data: bytes, media_type: str = "image/png") -> str:
        self.puts += 1
        if self.puts >= self.expected:
            self.all_in.set()
        await self.all_in.wait()
        return await super().put(data, media_type)


class DownStore(DirectoryImageStore):
    async def put(self, data: bytes, media_type: str = "image/png") -> str:
        raise StoreUnavailable("image store: bucket 'b' is unreachable (timed out)")


BASE_URL = "http://gw.test"


def result(count: int) -> ImageResult:
    return ImageResult(images=[GeneratedImage(data=PNG) for _ in range(count)], created=0, model="m")


async def test_the_images_of_a_request_are_stored_at_once(tmp_path: Path) -> None:
    store = GatedStore(tmp_path, expected=3)
    answer = result(3)
    await asyncio.wait_for(deliver(store, answer, ResponseFormat.URL, BASE_URL), timeout=10)
    urls = [image.url for image in answer.images]
    assert store.puts == 3 and len(set(urls)) == 3
    for url in urls:
        assert url is not None and url.startswith("http://gw.test/images/")
        assert await store.get(url.rsplit("/", 1)[1]) == (PNG, "image/png")


async def test_base64_clients_never_reach_the_store(tmp_path: Path) -> None:
    answer = result(2)
    await deliver(DownStore(tmp_path, 3600), answer, ResponseFormat.B64_JSON, BASE_URL)
    assert all(image.url is None for image in answer.images)


async def test_a_store_that_cannot_take_the_images_is_upstream_error(tmp_path: Path) -> None:
    with pytest.raises(GatewayError) as raised:
        await deliver(DownStore(tmp_path, 3600), result(2), ResponseFormat.URL, BASE_URL)
    assert raised.value.code is ErrorCode.UPSTREAM_ERROR
    assert "the image could not be stored: image store: bucket 'b' is unreachable" in str(raised.value)
