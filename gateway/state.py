"""What the app's lifespan builds once and every request shares."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from gateway.config import GatewayConfig
from gateway.imagestore import DirectoryImageStore
from gateway.router import Router

__all__ = ["Gateway"]


@dataclass
class Gateway:
    """The shared resources of one gateway process."""

    config: GatewayConfig
    client: httpx.AsyncClient
    router: Router
    image_store: DirectoryImageStore

    @property
    def public_base_url(self) -> str:
        return self.config.image_store.public_base_url.rstrip("/")
