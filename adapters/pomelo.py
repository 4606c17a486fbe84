"""Pomelo: the Midjourney endpoint (up to four images a call) or the Flux.1 endpoint (one a call)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, cast

from adapters.base import HttpProviderSettings
from adapters.http import HttpAdapter
from schemas import pomelo
from schemas.canonical import Operation
from schemas.dialect import Endpoint


class PomeloAdapter(HttpAdapter):
    """One provider entry speaks one of Pomelo's endpoints, named by its ``endpoint`` setting."""

    errors = pomelo.ERRORS
    ENDPOINTS: ClassVar[Mapping[str, Endpoint[Any, Any]]] = {"midjourney": pomelo.MIDJOURNEY, "flux": pomelo.FLUX}

    def endpoints_for(self, config: HttpProviderSettings) -> Mapping[Operation, Endpoint[Any, Any]]:
        return {Operation.GENERATE: self.ENDPOINTS[cast(PomeloSettings, config).endpoint]}


class PomeloSettings(HttpProviderSettings, Protocol):
    endpoint: str
