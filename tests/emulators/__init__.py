"""Provider emulators: real HTTP servers on loopback that speak the four image APIs
(Melious, Nebul, Pomelo, NebulaBlock) and OpenAI's Images API as their documents describe, written
independently of the project's own code so that tests against them are real.

    with start_emulator("nebul") as server:
        server.base_url                     # http://127.0.0.1:PORT
        server.emulator.add_fault(Fault(status=503, retry_after="2"))
        server.emulator.calls               # the recorded image requests

Run one as a process with `python -m tests.emulators KIND --port N` (or `all`).
"""

from __future__ import annotations

from typing import Any

from .base import DEFAULT_API_KEY, Emulator
from .control import Call, Fault
from .errors import ProviderError
from .melious import MeliousEmulator
from .nebul import NebulEmulator
from .nebulablock import NebulaBlockEmulator
from .openai import OpenAIEmulator
from .png import image_size, noise_png, solid_png
from .pomelo import PomeloEmulator
from .server import EmulatorServer

EMULATORS: dict[str, type[Emulator]] = {
    "melious": MeliousEmulator,
    "nebul": NebulEmulator,
    "pomelo": PomeloEmulator,
    "nebulablock": NebulaBlockEmulator,
    "openai": OpenAIEmulator,
}
"""The emulator class of each provider kind, in the order `all` assigns ports."""


def create_emulator(kind: str, api_key: str = DEFAULT_API_KEY, **kwargs: Any) -> Emulator:
    """A new emulator app (an ASGI callable) of `kind`, not yet served."""
    try:
        cls = EMULATORS[kind]
    except KeyError:
        raise ValueError(f"unknown emulator kind {kind!r}; choose from {', '.join(EMULATORS)}") from None
    return cls(api_key, **kwargs)


def start_emulator(
    kind: str, api_key: str = DEFAULT_API_KEY, port: int = 0, host: str = "127.0.0.1", **options: Any
) -> EmulatorServer:
    """Start an emulator of `kind` on `host:port` (0 = a free port) and return its running server.

    `options` go to the emulator: `noise=True` (random-pixel PNGs), `record_calls=False`."""
    return EmulatorServer(create_emulator(kind, api_key, **options), host=host, port=port).start()


__all__ = [
    "DEFAULT_API_KEY",
    "EMULATORS",
    "Call",
    "Emulator",
    "EmulatorServer",
    "Fault",
    "MeliousEmulator",
    "NebulEmulator",
    "NebulaBlockEmulator",
    "OpenAIEmulator",
    "PomeloEmulator",
    "ProviderError",
    "create_emulator",
    "image_size",
    "noise_png",
    "solid_png",
    "start_emulator",
]
