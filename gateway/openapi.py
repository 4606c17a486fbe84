"""OpenAPI for the dialect routes: made from the same table the pipeline serves (``gateway.routes.MOUNTS``).

The dialect routes are served by ``gateway.pipeline``, not by Litestar route handlers, so
Litestar cannot see them; this module adds each to the app's OpenAPI document, with the
JSON Schemas that msgspec derives from the same Structs the wire is decoded with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Litestar
from litestar._openapi.plugin import OpenAPIPlugin  # the app's OpenAPI document (no public accessor)
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, Operation, PathItem, RequestBody, Schema

from schemas.dialect import BodyKind, Endpoint

__all__ = ["DocumentedRoute", "add_dialect_routes", "operation_class"]

REF = "#/components/schemas/{name}"


@dataclass
class RawSchema(Schema):
    """A JSON Schema given as a plain dict (msgspec's), passed through as is."""

    raw: dict[str, Any] | None = None

    def to_schema(self) -> dict[str, Any]:
        return self.raw or {}


def _ref(struct: type) -> RawSchema:
    return RawSchema(raw={"$ref": REF.format(name=struct.__name__)})


def operation_class(endpoint: Endpoint[Any, Any]) -> type[Operation]:
    """An Operation that documents ``endpoint``'s request body and 200 answer."""
    media = "multipart/form-data" if endpoint.body_kind is BodyKind.MULTIPART else "application/json"

    @dataclass
    class DialectOperation(Operation):
        def __post_init__(self) -> None:
            self.request_body = RequestBody(
                content={media: OpenAPIMediaType(schema=_ref(endpoint.request_type))}, required=True
            )
            if self.responses and "200" in self.responses:
                answer = self.responses["200"]
                answer.content = {"application/json": OpenAPIMediaType(schema=_ref(endpoint.response_type))}  # type: ignore[union-attr]

    return DialectOperation


@dataclass(frozen=True)
class DocumentedRoute:
    """A dialect route as the OpenAPI document lists it."""

    path: str
    methods: tuple[str, ...]
    endpoint: Endpoint[Any, Any]
    name: str


def _operation(route: DocumentedRoute) -> Operation:
    endpoint = route.endpoint
    return operation_class(endpoint)(
        operation_id=route.name,
        summary=f"{endpoint.dialect} {endpoint.operation.value}",
        tags=[endpoint.dialect],
        responses={"200": OpenAPIResponse(description="The generated images, in the dialect's answer.")},
    )


def add_dialect_routes(app: Litestar, routes: list[DocumentedRoute]) -> None:
    """Add every route and every wire Struct of ``routes`` to the app's OpenAPI document.

    Litestar rebuilds ``components.schemas`` from its own registry, so they are added to
    the built document (at startup, before it is first served).
    """
    endpoints = [route.endpoint for route in routes]
    types = [struct for endpoint in endpoints for struct in (endpoint.request_type, endpoint.response_type)]
    _, schemas = msgspec.json.schema_components(types, ref_template=REF)
    document = app.plugins.get(OpenAPIPlugin).provide_openapi()
    document.components.schemas.update({name: RawSchema(raw=schema) for name, schema in schemas.items()})
    paths = document.paths if document.paths is not None else {}
    for route in routes:
        item = PathItem()
        for method in route.methods:
            setattr(item, method.lower(), _operation(route))
        paths[route.path] = item
    document.paths = paths
