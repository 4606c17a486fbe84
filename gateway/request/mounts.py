"""The dialect table: every inbound route of DIALECTS.md (``MOUNTS``), and the one index over it.

A ``Mount`` is a dialect endpoint under a path prefix. Everything that asks "which endpoint
is this path" asks here: the pipeline (``find_route``), the error rendering of a path no
handler took (``errors_for_path``), the job runner (``mount_at``, ``route_of``) and the
OpenAPI document (``MOUNTS`` itself).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from litestar.types import Method

from schemas import melious, nebul, nebulablock, openai, pomelo
from schemas.dialect import Endpoint, ErrorTable

__all__ = ["MOUNTS", "DialectRoute", "Mount", "errors_for_path", "find_route", "mount_at", "route_of"]


class Mount(NamedTuple):
    """A dialect endpoint served under a path prefix."""

    prefix: str
    endpoint: Endpoint[Any, Any]
    errors: ErrorTable
    methods: tuple[Method, ...] = ("POST",)


def _mounts() -> list[Mount]:
    # The paths only one dialect uses, served under its prefix and at the root too.
    single_dialect = [
        Mount("", pomelo.MIDJOURNEY, pomelo.ERRORS),
        Mount("", pomelo.FLUX, pomelo.ERRORS),
        Mount("", nebulablock.SERVERLESS, nebulablock.ERRORS, ("GET", "POST")),  # the document's curl says GET
        Mount("", nebulablock.V1, nebulablock.ERRORS),
    ]
    prefixed = {"pomelo": "/pomelo", "nebulablock": "/nebulablock"}
    return [
        Mount("/melious", melious.GENERATIONS, melious.ERRORS),
        *(Mount("/nebul", endpoint, nebul.ERRORS) for endpoint in (nebul.GENERATIONS, nebul.EDITS, nebul.VARIATIONS)),
        *(mount._replace(prefix=prefixed[mount.endpoint.dialect]) for mount in single_dialect),
        *single_dialect,
        # The root /v1/images/* speaks the OpenAI family (Melious and Nebul together).
        *(Mount("", e, openai.ERRORS) for e in (openai.GENERATIONS, openai.EDITS, openai.VARIATIONS)),
    ]


MOUNTS: Sequence[Mount] = _mounts()
# For requests no handler took (wrong method, unknown path): the dialect their path speaks.
_ERRORS_BY_PATH = {mount.prefix + mount.endpoint.path: mount.errors for mount in MOUNTS}
_ERRORS_BY_PREFIX = {mount.prefix: mount.errors for mount in MOUNTS if mount.prefix}


def errors_for_path(path: str) -> ErrorTable:
    """The error table of the dialect a path belongs to; the OpenAI envelope when none does."""
    if path in _ERRORS_BY_PATH:
        return _ERRORS_BY_PATH[path]
    prefix = "/" + path.split("/", 2)[1] if path.startswith("/") else ""
    return _ERRORS_BY_PREFIX.get(prefix, openai.ERRORS)


class DialectRoute(NamedTuple):
    """One dialect path: the mount serving each method, and the error table of its dialect."""

    by_method: Mapping[str, Mount]
    allow: str  # the Allow header of a 405

    @property
    def mount(self) -> Mount:
        return next(iter(self.by_method.values()))


def _routes() -> dict[str, DialectRoute]:
    methods: dict[str, dict[str, Mount]] = {}
    for mount in MOUNTS:
        for method in mount.methods:
            methods.setdefault(mount.prefix + mount.endpoint.path, {})[method] = mount
    return {path: DialectRoute(found, ", ".join(found)) for path, found in methods.items()}


# Path → its route. A path is looked up as sent, and without one trailing slash.
DIALECT_ROUTES: Mapping[str, DialectRoute] = _routes()


def find_route(path: str) -> DialectRoute | None:
    route = DIALECT_ROUTES.get(path)
    if route is None and len(path) > 1 and path.endswith("/"):
        route = DIALECT_ROUTES.get(path[:-1])
    return route


def mount_at(route: str) -> Mount | None:
    """The mount serving ``route`` (a prefix and a path, as a job records it); None when none does."""
    found = DIALECT_ROUTES.get(route)
    return found.mount if found is not None else None


def route_of(endpoint: Endpoint[Any, Any]) -> str:
    """The route a job of ``endpoint`` records: the first path in the table that serves it."""
    return _ROUTE_OF[id(endpoint)]


_ROUTE_OF: dict[int, str] = {}
for _path, _route in DIALECT_ROUTES.items():
    for _mount in _route.by_method.values():
        _ROUTE_OF.setdefault(id(_mount.endpoint), _path)
