"""Backends behind the router: one adapter class per provider, all speaking the canonical schema."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from adapters.base import Adapter, AdapterBase, CallOptions, HttpProviderSettings
from adapters.http import HttpAdapter
from adapters.local import LocalAdapter
from adapters.melious import MeliousAdapter
from adapters.nebul import NebulAdapter
from adapters.nebulablock import NebulaBlockAdapter
from adapters.openai import OpenAIAdapter
from adapters.pomelo import PomeloAdapter
from adapters.upstream import UpstreamClient

__all__ = ["ADAPTER_CLASSES", "Adapter", "AdapterBase", "CallOptions", "HttpAdapter", "build_adapter"]


# Provider kind (the `kind` of a provider in the config) → what builds its adapter.
ADAPTER_CLASSES: Mapping[str, Callable[[str, Any, UpstreamClient], Adapter]] = {
    "melious": MeliousAdapter,
    "nebul": NebulAdapter,
    "pomelo": PomeloAdapter,
    "nebulablock": NebulaBlockAdapter,
    "openai": OpenAIAdapter,  # any OpenAI-compatible images server
    "local": LocalAdapter,  # imports the engine (and torch) only when it runs models in process
}


def build_adapter(kind: str, name: str, config: HttpProviderSettings | Any, client: UpstreamClient) -> Adapter:
    """The adapter for a provider entry of the given kind."""
    return ADAPTER_CLASSES[kind](name, config, client)
