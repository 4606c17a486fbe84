"""Each provider's own readiness, checked in the background: a per-target state, never the replica's.

A provider that reports readiness (``Adapter.ready``: the local one, its models loaded or a
worker serving) is asked every ``server.provider_probe_interval_s`` by a task of the app's
lifespan. The last answer feeds ``image_gateway_provider_ready{provider}``, one log line per
change (``provider_unready`` at error level, then ``provider_ready``), and the ``providers``
part of ``/ready``'s body. ``/ready`` reads what the probe last saw and never calls a worker
itself: a kubelet's probe has a short timeout, and a pool of GPU workers that does not answer
must not make every replica unready (and so take the hosted providers down with it).

What ``/ready`` shows is public (the kubelet asks it with no credential): a count of the workers
up, and for models loaded here ``ready`` or ``not loaded``, never a worker's URL or a load error
(which can name a path on the server). The console (admin key) shows the details.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from adapters.base import Adapter
from gateway.observability import metrics
from gateway.shutdown import cancel_and_wait

__all__ = ["ProviderHealth", "public_state"]

log = structlog.get_logger("gateway.provider_health")

READY = "ready"


def public_state(state: dict[str, Any] | None) -> dict[str, Any]:
    """What ``/ready`` may show of an adapter's report: its flag and counts, nothing that names a host or a path."""
    if state is None:
        return {"ready": False, "checked": False}
    shown: dict[str, Any] = {"ready": bool(state.get("ready"))}
    workers = state.get("workers")
    if isinstance(workers, dict):
        shown["workers"] = len(workers)
        shown["workers_up"] = sum(1 for up in workers.values() if up)
    models = state.get("models")
    if isinstance(models, dict):
        shown["models"] = {name: READY if status == READY else "not loaded" for name, status in models.items()}
    return shown


class ProviderHealth:
    """The last readiness each reporting provider gave, refreshed by a task every ``interval_s``."""

    def __init__(self, adapters: dict[str, Adapter], interval_s: float) -> None:
        self.adapters = adapters
        self.interval_s = interval_s
        self.states: dict[str, dict[str, Any] | None] = {}
        self._ready: dict[str, bool] = {}
        self._task: asyncio.Task[None] | None = None
        self._checked = asyncio.Event()

    async def _check_one(self, name: str, adapter: Adapter) -> None:
        try:
            state = await adapter.ready()
        except Exception as exc:  # a provider's check that raises is that provider's problem, reported as down
            log.error("provider_check_failed", provider=name, error=type(exc).__name__)
            state = {"ready": False}
        if state is None:  # nothing to report (an HTTP provider: cooldowns say how it fares)
            return
        self.states[name] = state
        up = bool(state.get("ready"))
        metrics.PROVIDER_READY.labels(name).set(1 if up else 0)
        before = self._ready.get(name)
        self._ready[name] = up
        if (before is None and up) or before == up:
            return
        if up:
            log.warning("provider_ready", provider=name)
        else:
            log.error("provider_unready", provider=name, detail="requests for it fall back to the model's next target")

    async def check(self) -> None:
        """Ask every provider once, at the same time (one slow worker pool delays no other)."""
        await asyncio.gather(*(self._check_one(name, adapter) for name, adapter in self.adapters.items()))

    def public(self) -> dict[str, dict[str, Any]]:
        """The ``providers`` part of ``/ready``: each reporting provider as the last check saw it."""
        return {name: public_state(state) for name, state in self.states.items()}

    async def _run(self) -> None:
        while True:
            await self.check()
            self._checked.set()
            await asyncio.sleep(self.interval_s)

    def start(self) -> ProviderHealth:
        self._task = asyncio.create_task(self._run(), name="provider-health")
        return self

    async def first_check(self, timeout_s: float) -> None:
        """Wait at most ``timeout_s`` for the first check (start-up is not held by workers that do not answer)."""
        try:
            await asyncio.wait_for(self._checked.wait(), timeout_s)
        except TimeoutError:
            log.warning("provider_check_slow", detail=f"first check over {timeout_s:g} s; /ready shows it once done")

    async def aclose(self, timeout_s: float = 1.0) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task, timeout_s)
