"""Stop work for a client that hung up: a queued image request is dropped, an upstream call cancelled.

The one piece of serving that the gateway and the local backend's worker server share: it
needs only the ASGI ``receive`` callable (no torch, no web framework), so it lives here,
where both may import it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

__all__ = ["CLIENT_CLOSED_REQUEST", "ClientGone", "unless_client_leaves"]

CLIENT_CLOSED_REQUEST = 499  # nginx's status for "the client went away first"; nobody reads it
T = TypeVar("T")
Receive = Callable[[], Awaitable[Any]]  # ASGI's receive


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def unless_client_leaves(receive: Receive, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it when the client disconnects first (its body must be read already).

    ``receive`` is the request's ASGI receive.

    ``work`` runs in the caller's own task; only the watcher is a task of its own, which
    cancels the caller when the disconnect comes.
    """
    caller = asyncio.current_task()
    assert caller is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        await _disconnected(receive)
        gone = True
        caller.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise
        caller.uncancel()  # the cancel was ours: it becomes ClientGone, not a cancellation of the caller
        raise ClientGone from None
    finally:
        watcher.cancel()


async def _disconnected(receive: Receive) -> None:
    """Returns when the client hangs up. The body has been read, so the next ASGI message is the disconnect."""
    while (await receive())["type"] != "http.disconnect":
        pass
