"""A fake adapter for unit tests of the router and admission: scripted outcomes, calls counted."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

from adapters.base import AdapterBase, CallOptions
from gateway.config import GatewayConfig, parse_config
from schemas.canonical import GatewayError, GeneratedImage, ImageRequest, ImageResult


class ScriptedAdapter(AdapterBase):
    """Answers each call with the next scripted outcome: a GatewayError is raised, anything else is a result."""

    def __init__(self, name: str, outcomes: Iterable[GatewayError | None] = ()) -> None:
        self.name = name
        self.outcomes = list(outcomes)
        self.calls: list[ImageRequest] = []

    async def generate(self, request: ImageRequest, options: CallOptions) -> ImageResult:
        self.calls.append(request)
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if isinstance(outcome, GatewayError):
            raise outcome
        return ImageResult(
            images=[GeneratedImage(b64_json="aW1n")] * request.n, created=1, model=request.model, provider=self.name
        )



def config(providers: dict[str, dict[str, Any]], models: list[dict[str, Any]], **sections: Any) -> GatewayConfig:
    """A config checked by the same code as a file; providers are Melious entries on an unused address."""
    entries = {
        name: {"kind": "melious", "base_url": "http://127.0.0.1:9", "api_key": "k", **settings}
        for name, settings in providers.items()
    }
    return parse_config(yaml.safe_dump({"providers": entries, "models": models, **sections}), "<unit test>")
