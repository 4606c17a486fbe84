"""The image store on S3-compatible object storage, through obstore (chosen by measurement:
docs/benchmarks.md, "The image store's S3 client").

Objects are named like the directory store's files (``SignedNames``) under
``image_store.prefix``. With ``url_mode: presigned`` a client gets a presigned GET URL of the
bucket that expires with the TTL; with ``gateway`` it gets this gateway's ``/images/`` URL,
which any replica sharing the bucket and the secret serves. The objects themselves are
removed by the bucket's lifecycle rule (``image-gateway store-setup``), not by the gateway.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

import obstore
from obstore.exceptions import NotFoundError, PermissionDeniedError, UnauthenticatedError
from obstore.store import S3Store

from gateway.config import S3StoreConfig
from gateway.images.store import SignedNames, StoreUnavailable, gateway_url

__all__ = ["S3ImageStore", "describe_failure"]

_STATUS = re.compile(r"status code: (\d{3})")


def describe_failure(config: S3StoreConfig, exc: BaseException) -> str:
    """What went wrong with the bucket, in an operator's words (obstore's text names no secret,
    but it is long: only the HTTP status is kept)."""
    where = f"bucket {config.bucket!r}" + (f" at {config.endpoint_url}" if config.endpoint_url else "")
    text = str(exc)
    status = _STATUS.search(text)
    code = status.group(1) if status else ""
    if "NoSuchBucket" in text or (code == "404" and "list" in text):
        return f"image store: {where} does not exist (create it, or fix image_store.bucket)"
    if isinstance(exc, PermissionDeniedError | UnauthenticatedError) or code in ("401", "403"):
        return f"image store: {where} refused the credentials (HTTP {code or 403}): check the keys and their rights"
    if code:
        return f"image store: {where} answered HTTP {code}"
    reason = "timed out" if "Timeout" in text or "TimedOut" in text else "no connection"
    return f"image store: {where} is unreachable ({reason})"


class S3ImageStore:
    """Signed, expiring images in a bucket; satisfies ``gateway.imagestore.ImageStore``."""

    def __init__(self, config: S3StoreConfig) -> None:
        self.config = config
        self.ttl_seconds = config.ttl_seconds
        self.names = SignedNames(config.ttl_seconds, config.secret)
        self._ttl = datetime.timedelta(seconds=config.ttl_seconds)
        self.store = S3Store(config.bucket, **self._options())

    def _options(self) -> dict[str, Any]:
        config = self.config
        options: dict[str, Any] = {
            "client_options": {
                "timeout": f"{config.timeout_s}s",
                "connect_timeout": f"{min(config.timeout_s, 5.0)}s",
                "allow_http": config.endpoint_url.startswith("http://"),
            },
            # One quick retry: a failing store should fail the URL answer within about timeout_s, not minutes.
            "retry_config": {
                "max_retries": 1,
                "retry_timeout": datetime.timedelta(seconds=config.timeout_s),
                "backoff": {
                    "init_backoff": datetime.timedelta(milliseconds=100),
                    "max_backoff": datetime.timedelta(seconds=1),
                    "base": 2.0,
                },
            },
        }
        if config.endpoint_url:
            options["endpoint"] = config.endpoint_url
        if config.region:
            options["region"] = config.region
        if config.access_key_id:  # else obstore reads AWS_* from the environment, or instance credentials
            options["access_key_id"] = config.access_key_id
            options["secret_access_key"] = config.secret_access_key
        return options

    def _key(self, name: str) -> str:
        return self.config.prefix + name

    async def put(self, data: bytes, media_type: str = "image/png", ttl_seconds: int | None = None) -> str:
        # Past the store's TTL, the bucket's lifecycle rule (whole days, at least one) may remove it first.
        name = self.names.new(media_type, ttl_seconds)
        try:
            await obstore.put_async(
                self.store,
                self._key(name),
                data,
                attributes={
                    "Content-Type": media_type,
                    "Cache-Control": f"private, max-age={ttl_seconds or self.ttl_seconds}",
                },
            )
        except Exception as exc:  # obstore's errors are many; each means the image could not be kept
            raise StoreUnavailable(describe_failure(self.config, exc)) from exc
        return name

    def url(self, name: str, base_url: str) -> str:
        if self.config.url_mode == "gateway":
            return gateway_url(name, base_url)
        return obstore.sign(self.store, "GET", self._key(name), self._ttl)

    async def get(self, name: str) -> tuple[bytes, str] | None:
        media_type = self.names.media_type(name)
        if media_type is None:
            return None
        try:
            found = await obstore.get_async(self.store, self._key(name))
            data = await found.bytes_async()
        except (NotFoundError, FileNotFoundError):
            return None
        except Exception as exc:
            raise StoreUnavailable(describe_failure(self.config, exc)) from exc
        return bytes(data), media_type

    async def check(self) -> None:
        """The bucket exists and takes these credentials: one list of at most one key under the prefix."""
        try:
            stream = obstore.list(self.store, prefix=self.config.prefix, chunk_size=1)
            async for _ in stream:
                break
        except Exception as exc:
            raise StoreUnavailable(describe_failure(self.config, exc)) from exc

    async def aclose(self) -> None:
        return None
