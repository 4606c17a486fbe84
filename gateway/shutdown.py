"""The process's SIGTERM, seen by the app the moment it arrives, and a shutdown that always ends.

uvicorn keeps SIGTERM to itself: it stops accepting, waits for the requests in flight (up to
``timeout_graceful_shutdown``) and only then runs the lifespan's shutdown. The job consumers would
take jobs all that while, and a lifespan step stuck on a Redis that stopped answering would keep
the process for good. ``Shutdown`` wraps the handler uvicorn installed (in the main thread, from the
lifespan's startup, so it works in every ``--workers`` process): on the first SIGTERM or SIGINT it
fixes the deadline (``server.shutdown_grace_s`` from now), runs the callbacks registered with
``on_begin`` on the event loop (the consumers stop taking jobs), then lets uvicorn do its part. A
watchdog thread ends the process ``MARGIN_S`` past the deadline if it is still there, whatever it
is waiting for.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

import structlog

__all__ = ["MARGIN_S", "STEP_S", "Shutdown", "bounded"]

log = structlog.get_logger("gateway.shutdown")

MARGIN_S = 5.0  # past the grace: the lifespan's last steps, then the watchdog ends the process
STEP_S = 1.0  # the longest one closing step of the lifespan may take (a stuck one is left behind)
FORCED_EXIT_STATUS = 70  # EX_SOFTWARE: the process was ended by its own watchdog
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Shutdown:
    """When this process began to stop, and what it must do then (see the module doc)."""

    def __init__(self, grace_s: float, margin_s: float = MARGIN_S) -> None:
        self.grace_s = grace_s
        self.margin_s = margin_s
        self.deadline: float | None = None  # time.monotonic() by which the work in flight must end
        self._callbacks: list[Callable[[], None]] = []
        self._previous: dict[int, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchdog: threading.Timer | None = None
        self._callbacks_run = False

    @property
    def begun(self) -> bool:
        return self.deadline is not None

    def on_begin(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` on the event loop when the shutdown begins (at once if it has)."""
        self._callbacks.append(callback)
        if self.begun:
            callback()

    def install(self) -> None:
        """Wrap the SIGTERM/SIGINT handlers in place (uvicorn's); only the main thread can."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._loop = asyncio.get_running_loop()
        for sig in _SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def uninstall(self) -> None:
        """Put the handlers back (uvicorn raises the signal it caught again once it is done)."""
        for sig, handler in self._previous.items():
            if signal.getsignal(sig) == self._on_signal:
                signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        if not self.begun and self._loop is not None:
            self._start_clock()
            self._watchdog = threading.Timer(self.grace_s + self.margin_s, self._force_exit)
            self._watchdog.daemon = True
            self._watchdog.start()
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to stop
                self._loop.call_soon_threadsafe(self.begin)
        previous = self._previous.get(sig)
        if callable(previous):
            previous(sig, frame)

    def _start_clock(self) -> None:
        if self.deadline is not None:
            return
        self.deadline = time.monotonic() + self.grace_s

    def begin(self) -> None:
        """The shutdown begins (a signal, or the lifespan's end when no signal came): run the callbacks once."""
        first = not self._callbacks_run
        self._start_clock()
        if first:
            self._callbacks_run = True
            log.info("shutdown_begun", grace_s=self.grace_s)
            for callback in self._callbacks:
                try:
                    callback()
                except Exception as exc:  # one failing callback does not keep the others from running
                    log.error("shutdown_callback_failed", error=f"{type(exc).__name__}: {exc}")

    def left(self) -> float:
        """Seconds until the deadline (the whole grace before the shutdown began)."""
        if self.deadline is None:
            return self.grace_s
        return max(0.0, self.deadline - time.monotonic())

    def closing_left(self, step_s: float) -> float:
        """How long the next closing step may take: ``step_s``, cut so that the steps after the grace end
        a second before the watchdog would."""
        if self.deadline is None:
            return step_s
        return max(0.0, min(step_s, self.deadline + self.margin_s - 1.0 - time.monotonic()))

    def done(self) -> None:
        """The lifespan's shutdown is over: no watchdog needed."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self.uninstall()

    def _force_exit(self) -> None:
        log.error(
            "shutdown_forced",
            detail=f"still running {self.margin_s:g} s past the {self.grace_s:g} s grace; exiting now",
        )
        os._exit(FORCED_EXIT_STATUS)


async def cancel_and_wait(task: asyncio.Task[Any] | None, seconds: float) -> bool:
    """Cancel a background task and wait at most ``seconds`` for it to end; whether it ended (None: nothing to
    stop). asyncio.wait neither raises the task's CancelledError nor hides one aimed at the caller."""
    if task is None:
        return True
    task.cancel()
    await asyncio.wait({task}, timeout=max(0.0, seconds))
    return task.done()


async def bounded(step: Awaitable[Any], seconds: float, what: str) -> None:
    """Await ``step`` for at most ``seconds``; past that it is cancelled and left behind (never awaited
    again, so a step that swallows its cancel cannot hold the caller). The caller's own cancel goes through."""
    task = asyncio.ensure_future(step)
    await asyncio.wait({task}, timeout=max(0.0, seconds))
    if not task.done():
        task.cancel()
        log.error("shutdown_step_abandoned", step=what, after_s=round(seconds, 3))
        return
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        log.warning("shutdown_step_failed", step=what, error=f"{type(exc).__name__}: {exc}")
