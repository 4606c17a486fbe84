"""What the app's lifespan builds once and every request shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, TypeAlias, TypeVar

from litestar.di import Dependency
from litestar.params import SkipValidationMarker

from adapters.base import Adapter
from adapters.upstream import UpstreamClient
from gateway.admission.gate import Admission
from gateway.config import GatewayConfig
from gateway.images.store import ImageStore
from gateway.jobs.webhooks import Webhooks
from gateway.observability.recent import RecentRequests
from gateway.request.idempotency import Idempotency
from gateway.routing.cooldown import Cooldowns
from gateway.routing.dedup import Dedup
from gateway.routing.router import Router

if TYPE_CHECKING:
    from gateway.request.admitted import JobIntake

__all__ = ["Gateway", "Injected"]

T = TypeVar("T")
# A route handler's parameter that Litestar's dependency injection fills (the app's ``dependencies``, by the
# parameter's name: gateway/app.py), passed as it is: never converted or checked like a request's field.
Injected: TypeAlias = Annotated[T, Dependency(kind="named"), SkipValidationMarker()]


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
    idempotency: Idempotency | None = (
        None  # Idempotency-Key (gateway/request/idempotency.py), set by the app's lifespan
    )
    adapters: dict[str, Adapter] = field(default_factory=dict)
    jobs: JobIntake | None = None  # async jobs (gateway/jobs/service.py), set by the app's lifespan
    # The last requests by request id, for the console (gateway/observability/recent.py).
    recent_requests: RecentRequests = field(default_factory=RecentRequests)

    @property
    def public_base_url(self) -> str:
        return self.config.image_store.public_base_url.rstrip("/")
