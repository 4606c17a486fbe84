"""A fake adapter for unit tests of the router and admission: scripted outcomes, calls counted."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from typing import Any

import yaml

from adapters.base import AdapterBase, CallOptions
from gateway.config import GatewayConfig, parse_config
from schemas.canonical import GatewayError, GeneratedImage, ImageRequest, ImageResult, Progress


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


class SteppingAdapter(AdapterBase):
    """Reports ``steps`` denoising steps through ``options.progress``, each after the test opens its gate.

    ``started`` is set when a call begins; ``cancelled`` when a call was cancelled mid-way. Thread events:
    a test client may run the app on a loop of its own.
    """

    def __init__(self, name: str, steps: int) -> None:
        self.name = name
        self.steps = steps
        self.gates = [threading.Event() for _ in range(steps)]
        self.started = threading.Event()
        self.cancelled = threading.Event()
        self.calls = 0

    def open(self, upto: int) -> None:
        for gate in self.gates[:upto]:
            gate.set()

    async def generate(self, request: ImageRequest, options: CallOptions) -> ImageResult:
        self.calls += 1
        self.started.set()
        try:
            for step, gate in enumerate(self.gates, start=1):
                while not gate.is_set():
                    await asyncio.sleep(0.01)
                if options.progress is not None:
                    options.progress(Progress(step=step, steps=self.steps))
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return ImageResult(
            images=[GeneratedImage(b64_json="aW1n")] * request.n, created=1, model=request.model, provider=self.name
        )


async def wait_until(event: threading.Event, timeout: float = 10.0) -> None:
    """Wait for a thread event without blocking the loop; an AssertionError when it is not set in time."""
    for _ in range(int(timeout / 0.01)):
        if event.is_set():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the event was never set")
