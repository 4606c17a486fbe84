"""NebulaBlock: the serverless API (one image a call, image-to-image and inpainting) or the v1 API."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, cast

from adapters.base import HttpProviderSettings
from adapters.http import HttpAdapter
from schemas import nebulablock
from schemas.canonical import Operation
from schemas.dialect import Endpoint


class NebulaBlockAdapter(HttpAdapter):
    """One provider entry speaks one API generation, named by its ``api`` setting."""

    errors = nebulablock.ERRORS
    APIS: ClassVar[Mapping[str, Mapping[Operation, Endpoint[Any, Any]]]] = {
        "serverless": {Operation.GENERATE: nebulablock.SERVERLESS, Operation.EDIT: nebulablock.SERVERLESS},
        "v1": {Operation.GENERATE: nebulablock.V1},
    }

    def endpoints_for(self, config: HttpProviderSettings) -> Mapping[Operation, Endpoint[Any, Any]]:
        return self.APIS[cast(NebulaBlockSettings, config).api]


class NebulaBlockSettings(HttpProviderSettings, Protocol):
    api: str
