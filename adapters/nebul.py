"""Nebul: generations, edits (multipart, with mask) and variations."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adapters.base import HttpProviderSettings
from adapters.http import HttpAdapter
from schemas import nebul
from schemas.canonical import Operation
from schemas.dialect import Endpoint


class NebulAdapter(HttpAdapter):
    errors = nebul.ERRORS

    def endpoints_for(self, config: HttpProviderSettings) -> Mapping[Operation, Endpoint[Any, Any]]:
        return {
            Operation.GENERATE: nebul.GENERATIONS,
            Operation.EDIT: nebul.EDITS,
            Operation.VARIATION: nebul.VARIATIONS,
        }
