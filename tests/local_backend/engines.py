"""Engines for tests: local settings from a few names, a running engine, and a device thread held still."""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import msgspec

from schemas.local import LocalBackendSettings

_MISSING = [name for name in ("torch", "diffusers", "transformers", "PIL") if importlib.util.find_spec(name) is None]
if _MISSING:
    raise ImportError(
        f"the local backend's tests need the [local] extra, and {', '.join(_MISSING)} is not installed: "
        "pip install -e '.[local]' (make install does)"
    )

# Built-in models every test may use, by the names the tests ask for.
TINY = {"tiny": "builtin:tiny-sd", "tiny-sdxl": "builtin:tiny-sdxl", "tiny-flux": "builtin:tiny-flux"}


def local_settings(models: dict[str, str] | None = None, **options: Any) -> LocalBackendSettings:
    """Settings of a ``kind: local`` provider, checked by the same code as a config file."""
    chosen = {"tiny": TINY["tiny"]} if models is None else models
    raw = {"kind": "local", "models": {name: {"path": path} for name, path in chosen.items()}, **options}
    return msgspec.convert(raw, LocalBackendSettings)


@asynccontextmanager
async def running_engine(settings: LocalBackendSettings) -> AsyncIterator[Any]:
    """A started ``LocalEngine``, closed on the way out."""
    from local_backend.engine import LocalEngine

    engine = LocalEngine(settings)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.aclose()


class DeviceHold:
    """The device thread held at the start of a batch: ``started`` once it is there, ``release()`` lets it go."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.released = threading.Event()

    def release(self) -> None:
        self.released.set()

    async def wait_started(self, timeout: float = 10.0) -> None:
        if not await asyncio.to_thread(self.started.wait, timeout):
            raise AssertionError("the device never started the held batch")


@contextmanager
def held_device(engine: Any, model: str = "tiny") -> Iterator[DeviceHold]:
    """Hold the device thread at the start of each batch of ``model`` until the test releases it.

    Lets a test fill the queue, or cancel a waiting request, while a batch is known to be running.
    """
    loaded = engine.models[model]
    hold = DeviceHold()
    real_draw = loaded.draw

    def held_draw(*args: Any, **kwargs: Any) -> Any:
        hold.started.set()
        if not hold.released.wait(timeout=30):
            raise RuntimeError("held_device was never released")
        return real_draw(*args, **kwargs)

    loaded.draw = held_draw
    try:
        yield hold
    finally:
        hold.release()
        loaded.draw = real_draw
