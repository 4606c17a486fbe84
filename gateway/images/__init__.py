"""Where images go for a URL answer: the directory and S3 stores behind one factory, and the bucket's setup."""

from __future__ import annotations

from gateway.config import ImageStoreConfig, S3StoreConfig
from gateway.images.store import DirectoryImageStore, ImageStore, StoreUnavailable

__all__ = ["ImageStore", "StoreUnavailable", "build_image_store"]


def build_image_store(config: ImageStoreConfig) -> ImageStore:
    """The store the config names (``image_store.kind``)."""
    if isinstance(config, S3StoreConfig):
        from gateway.images.s3 import S3ImageStore

        return S3ImageStore(config)
    return DirectoryImageStore(config.path, config.ttl_seconds, config.secret)
