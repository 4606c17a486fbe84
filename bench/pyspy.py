"""py-spy's raw samples of the gateway, folded into where its CPU goes.

A sample counts for the innermost frame on its stack that belongs to a library we name
(uvicorn, Litestar, the upstream client, Redis, logging...), so the shares add up to 100%
of the busy samples; a few frames worth naming in the report are also counted inclusively.
"""

from __future__ import annotations

import math
from collections import Counter

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
    ("redis_limiter", "RedisLimiter.check (gateway/ratelimit.py"),
    ("log_middleware", "RequestIdMiddleware.__call__ (gateway/logs.py"),
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


def fold(raw: str) -> Folded:
    """py-spy's raw (collapsed) stacks: busy samples by category, top self and inclusive frames."""
    by_self: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    total = idle = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        leaf = frames[-1]
        if leaf.startswith(("select (selectors.py", "EpollSelector.select", "wait (threading.py", "Condition.wait")):
            idle += count  # waiting in epoll or on a lock: not work
            continue
        total += count
        by_self[leaf] += count
        for function in dict.fromkeys(_function(frame) for frame in frames):  # once each, in stack order
            inclusive[function] += count
        categories[_category(frames)] += count
    share = (lambda n: 100.0 * n / total) if total else (lambda n: math.nan)
    marks = {name: share(sum(n for f, n in inclusive.items() if f.startswith(prefix))) for name, prefix in MARKS}
    marks |= {name: share(sum(n for f, n in by_self.items() if f.startswith(prefix))) for name, prefix in SELF_MARKS}
    marks["async_bookkeeping"] = share(
        sum(
            n
            for f, n in by_self.items()
            if f.startswith("current_task (asyncio/") or "(anyio/" in f or "(sniffio/" in f
        )
    )
    ours = ("(gateway/", "(adapters/", "(schemas/")
    return Folded(
        busy_samples=total,
        idle_samples=idle,
        categories=[(name, share(n)) for name, n in categories.most_common()],
        top_self=[(frame, share(n)) for frame, n in by_self.most_common(15)],
        top_inclusive=[(f, share(n)) for f, n in inclusive.most_common(80) if not f.startswith(BOOTSTRAP)][:20],
        gateway_inclusive=[
            (f, share(n))
            for f, n in inclusive.most_common()
            if any(o in f for o in ours) and not f.startswith(BOOTSTRAP) and "(gateway/cli.py" not in f
        ][:12],
        marks=marks,
    )
