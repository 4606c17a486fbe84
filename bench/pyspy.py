"""py-spy's raw samples of the gateway, folded into where its CPU goes.

A sample counts for the innermost frame on its stack that belongs to a library we name
(uvicorn, Litestar, the upstream client, Redis, logging...), so the shares add up to 100%
of the busy samples; a few frames worth naming in the report are also counted inclusively.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from bench.results import Folded

__all__ = ["BOOTSTRAP", "CATEGORIES", "MARKS", "fold"]

# A sample goes to the innermost frame on its stack that belongs to one of these; frames of other
# libraries (h11, anyio, sniffio, asyncio...) count for whoever called them.
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("HTTP server: uvicorn (and its parser)", ("uvicorn/",)),
    ("Litestar (routing, request, response, middleware)", ("litestar/",)),
    ("upstream client: httpx + httpcore (and h11, anyio under them)", ("httpx/", "httpcore/", "httpx_aiohttp/")),
    ("upstream client: aiohttp (and multidict, yarl)", ("aiohttp/", "multidict/", "yarl/")),
    ("Redis client (rate limit)", ("redis/",)),
    ("logging: structlog", ("structlog/", "logging/")),
    ("metrics: prometheus_client", ("prometheus_client/",)),
    ("retries: tenacity", ("tenacity/",)),
    ("gateway code (gateway/, adapters/, schemas/)", ("gateway/", "adapters/", "schemas/")),
    ("msgspec (JSON)", ("msgspec",)),
]


# Frames worth naming in the obstacles: (name, frame prefix); their inclusive share is reported.
MARKS: list[tuple[str, str]] = [
    ("httpcore_expiry_scan", "AsyncHTTP11Connection.has_expired (httpcore/"),
    ("sniffio_lookup", "current_async_library (sniffio/"),
    ("structlog", "BoundLoggerLazyProxy"),
    ("redis_limiter", "RedisLimiter.check (gateway/admission/ratelimit.py"),
    ("log_middleware", "RequestIdMiddleware.__call__ (gateway/observability/logs.py"),
    ("upstream_call", "HttpAdapter._send (adapters/http.py"),
    ("upstream_client", "AiohttpUpstream.send (adapters/upstream.py"),
]
SELF_MARKS: list[tuple[str, str]] = [("socket_write", "_SelectorSocketTransport.write (asyncio/")]


# The frames that start the server: on every stack, so they say nothing about where time goes.
BOOTSTRAP = (
    "<module>", "main (gateway/cli.py", "_serve (gateway/cli.py", "run (uvicorn/main.py", "Server.run",
    "asyncio_run", "Runner.run", "BaseEventLoop.run", "Handle._run", "_run_once", "_run_module_as_main",
    "_run_code (<frozen runpy>", "Server.serve (uvicorn/", "Server._serve (uvicorn/", "run (asyncio/runners.py",
)  # fmt: skip


def _category(frames: list[str]) -> str:
    for frame in reversed(frames):  # innermost first: whose call is this time spent in
        if frame.startswith(BOOTSTRAP):
            continue
        where = frame[frame.rfind("(") + 1 :]
        for name, needles in CATEGORIES:
            if any(needle in where for needle in needles):
                return name
    return "event loop (uvloop's C code or asyncio), sockets, the rest of the stdlib"


def _function(frame: str) -> str:
    """`name (path:line)` without the line, so that a function's lines count together."""
    head, _, where = frame.rpartition(" (")
    return f"{head} ({where.rsplit(':', 1)[0]})" if where else frame


IDLE_LEAVES = ("select (selectors.py", "EpollSelector.select", "wait (threading.py", "Condition.wait")
OURS = ("(gateway/", "(adapters/", "(schemas/")


@dataclass
class _Counts:
    """Samples counted by leaf frame, by function anywhere on the stack, and by category."""

    by_self: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)
    categories: Counter[str] = field(default_factory=Counter)
    busy: int = 0
    idle: int = 0

    def add(self, frames: list[str], count: int) -> None:
        if frames[-1].startswith(IDLE_LEAVES):
            self.idle += count  # waiting in epoll or on a lock: not work
            return
        self.busy += count
        self.by_self[frames[-1]] += count
        for function in dict.fromkeys(_function(frame) for frame in frames):  # once each, in stack order
            self.inclusive[function] += count
        self.categories[_category(frames)] += count

    def share(self, samples: int) -> float:
        """Percent of the busy samples."""
        return 100.0 * samples / self.busy if self.busy else math.nan

    def marks(self) -> dict[str, float]:
        inclusive, by_self = self.inclusive.items(), self.by_self.items()
        marks = {name: self.share(sum(n for f, n in inclusive if f.startswith(prefix))) for name, prefix in MARKS}
        marks |= {name: self.share(sum(n for f, n in by_self if f.startswith(prefix))) for name, prefix in SELF_MARKS}
        marks["async_bookkeeping"] = self.share(sum(n for f, n in by_self if _bookkeeping(f)))
        return marks


def _bookkeeping(frame: str) -> bool:
    """asyncio's current_task, anyio and sniffio: the async libraries asking who is running."""
    return frame.startswith("current_task (asyncio/") or "(anyio/" in frame or "(sniffio/" in frame


def _samples(raw: str) -> list[tuple[list[str], int]]:
    """(frames, outermost first; count) of each line of py-spy's raw output."""
    found = []
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            found.append((stack.split(";"), int(count)))
    return found


def fold(raw: str) -> Folded:
    """py-spy's raw (collapsed) stacks: busy samples by category, top self and inclusive frames."""
    counts = _Counts()
    for frames, count in _samples(raw):
        counts.add(frames, count)
    share, inclusive = counts.share, counts.inclusive.most_common()
    return Folded(
        busy_samples=counts.busy,
        idle_samples=counts.idle,
        categories=[(name, share(n)) for name, n in counts.categories.most_common()],
        top_self=[(frame, share(n)) for frame, n in counts.by_self.most_common(15)],
        top_inclusive=[(f, share(n)) for f, n in inclusive[:80] if not f.startswith(BOOTSTRAP)][:20],
        gateway_inclusive=[
            (f, share(n))
            for f, n in inclusive
            if any(o in f for o in OURS) and not f.startswith(BOOTSTRAP) and "(gateway/cli.py" not in f
        ][:12],
        marks=counts.marks(),
    )
