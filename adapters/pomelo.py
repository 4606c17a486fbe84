"""Pomelo: the Midjourney endpoint (up to four images a call) or the Flux.1 endpoint (one a call)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from adapters.base import HttpProviderSettings
from adapters.http import HttpAdapter
from schemas import pomelo
from schemas.canonical import Operation
from schemas.dialect import Endpoint


class PomeloAdapter(HttpAdapter):
    """One provider entry speaks one of Pomelo's endpoints, named by its ``endpoint`` setting."""

    errors = pomelo.ERRORS
    ENDPOINTS: ClassVar[Mapping[str, tuple[Endpoint[Any, Any], int]]] = {
        "midjourney": (pomelo.MIDJOURNEY, 4),
        "flux": (pomelo.FLUX, 1),
    }

    def endpoints_for(self, config: HttpProviderSettings) -> Mapping[Operation, Endpoint[Any, Any]]:
        endpoint, self.max_n_per_call = self.ENDPOINTS[config.endpoint]  # type: ignore[attr-defined, misc]
        return {Operation.GENERATE: endpoint}
