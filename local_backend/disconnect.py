"""Stop work for a client that hung up: a queued image request is dropped, an upstream call cancelled.

Used by the worker server and by the gateway's routes; it needs only the ASGI request, no torch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from litestar import Request

__all__ = ["CLIENT_CLOSED_REQUEST", "ClientGone", "unless_client_leaves"]

CLIENT_CLOSED_REQUEST = 499  # nginx's status for "the client went away first"; nobody reads it
T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def unless_client_leaves(request: Request[Any, Any, Any], work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it when the client disconnects first (its body must be read already)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ClientGone
    return task.result()


async def _disconnected(request: Request[Any, Any, Any]) -> None:
    """Returns when the client hangs up. The body has been read, so the next ASGI message is the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
