"""The image store as a background check last saw it, and what that means for the replica's readiness.

The store is checked once at start (``ImageStore.check``: the bucket exists and takes the credentials)
and then every ``image_store.probe_interval_s`` by a task of the app's lifespan. The last answer feeds
``image_gateway_image_store_ready``, one log line per change (``image_store_unavailable`` at error level,
then ``image_store_recovered``) and the ``image_store`` check of ``/ready``, which reads it and never
waits on the store itself (a paused store answers nothing until the call's ``timeout_s``, longer than
a kubelet's or a load balancer's probe waits).

What it means for readiness: a store never seen usable is a replica not ready (a wrong bucket or
refused credentials keep it out of rotation from its start, where a rollout stops). A store seen usable
once and then gone is ``degraded``, not unready: every replica shares it, so taking them out would
take down the clients who ask for base64 too, and URL answers already fail with ``upstream_error``.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import structlog

from gateway.images.store import ImageStore, StoreUnavailable
from gateway.observability import metrics
from gateway.shutdown import cancel_and_wait

__all__ = ["StoreHealth", "StoreState"]

log = structlog.get_logger("gateway.image_store")

StoreState = Literal["ok", "degraded", "down"]


class StoreHealth:
    """The image store's last check, refreshed by a task every ``interval_s``."""

    def __init__(self, store: ImageStore, interval_s: float) -> None:
        self.store = store
        self.interval_s = interval_s
        self.usable: bool | None = None  # None: not checked yet
        self.seen_usable = False
        self.public = "not checked yet"  # what /ready shows: StoreUnavailable.public, never a server path
        self._task: asyncio.Task[None] | None = None
        metrics.IMAGE_STORE_READY.set(0)  # not usable until seen so

    async def check(self) -> bool:
        """Check the store once and record the answer (a change is logged and moves the gauge)."""
        try:
            await self.store.check()
        except StoreUnavailable as exc:
            self._observe(False, str(exc), exc.public)
            return False
        except Exception as exc:  # a check that fails otherwise says the same; the task goes on
            self._observe(False, f"image store: check failed ({type(exc).__name__})")
            return False
        self._observe(True)
        return True

    def _observe(self, usable: bool, detail: str = "", public: str = "") -> None:
        before, self.usable = self.usable, usable
        metrics.IMAGE_STORE_READY.set(1 if usable else 0)
        if usable:
            self.seen_usable = True
            self.public = "ok"
            if before is False:
                log.warning("image_store_recovered", detail="URL answers are kept again")
            return
        self.public = public or detail
        if before is not False:
            effect = "URL answers fail, base64 answers are served" if self.seen_usable else "the replica is not ready"
            log.error("image_store_unavailable", detail=detail, effect=effect)

    def state(self) -> StoreState:
        """``ok``; ``degraded`` (seen usable once, not now: still ready); ``down`` (never seen usable: not ready)."""
        if self.usable:
            return "ok"
        return "degraded" if self.seen_usable else "down"

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.check()

    def start(self) -> StoreHealth:
        """The checks every ``interval_s`` from now (the first one, at start, is the caller's ``check``)."""
        self._task = asyncio.create_task(self._run(), name="image-store-health")
        return self

    async def aclose(self, timeout_s: float = 1.0) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task, timeout_s)
