"""Backends behind the router: one adapter class per provider, all speaking the canonical schema."""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from adapters.base import Adapter, CallOptions, HttpProviderSettings
from adapters.http import HttpAdapter
from adapters.melious import MeliousAdapter
from adapters.nebul import NebulAdapter
from adapters.nebulablock import NebulaBlockAdapter
from adapters.pomelo import PomeloAdapter

__all__ = ["ADAPTER_CLASSES", "Adapter", "CallOptions", "HttpAdapter", "build_adapter"]

# Provider kind (the `kind` of a provider in the config) → its adapter class.
ADAPTER_CLASSES: Mapping[str, type[HttpAdapter]] = {
    "melious": MeliousAdapter,
    "nebul": NebulAdapter,
    "pomelo": PomeloAdapter,
    "nebulablock": NebulaBlockAdapter,
}


def build_adapter(kind: str, name: str, config: HttpProviderSettings, client: httpx.AsyncClient) -> Adapter:
    """The adapter for a provider entry of the given kind."""
    return ADAPTER_CLASSES[kind](name, config, client)
