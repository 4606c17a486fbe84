"""What the app's lifespan builds once and every request shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from adapters.base import Adapter
from adapters.upstream import UpstreamClient
from gateway.admission import Admission
from gateway.config import GatewayConfig
from gateway.cooldown import Cooldowns
from gateway.dedup import Dedup
from gateway.idempotency import Idempotency
from gateway.imagestore import ImageStore
from gateway.recent import RecentRequests
from gateway.router import Router
from gateway.webhooks import Webhooks

if TYPE_CHECKING:
    from gateway.jobs import Jobs

__all__ = ["Gateway"]


@dataclass
class Gateway:
    """The shared resources of one gateway process."""

    config: GatewayConfig
    client: UpstreamClient
    router: Router
    image_store: ImageStore
    admission: Admission
    cooldowns: Cooldowns
    webhooks: Webhooks
    dedup: Dedup
    redis: Any = None
    idempotency: Idempotency | None = None  # Idempotency-Key (gateway/idempotency.py), set by the app's lifespan
    adapters: dict[str, Adapter] = field(default_factory=dict)
    jobs: Jobs | None = None  # async jobs (gateway/jobs.py), set by the app's lifespan
    # The last requests by request id, for the console (gateway/recent.py).
    recent_requests: RecentRequests = field(default_factory=RecentRequests)

    @property
    def public_base_url(self) -> str:
        return self.config.image_store.public_base_url.rstrip("/")
