"""Melious: OpenAI-compatible generations, up to four images a call."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adapters.base import HttpProviderSettings
from adapters.http import HttpAdapter
from schemas import melious
from schemas.canonical import Operation
from schemas.dialect import Endpoint


class MeliousAdapter(HttpAdapter):
    errors = melious.ERRORS

    def endpoints_for(self, config: HttpProviderSettings) -> Mapping[Operation, Endpoint[Any, Any]]:
        return {Operation.GENERATE: melious.GENERATIONS}
