"""OpenAPI for the dialect routes: request and response bodies from the dialects' msgspec Structs.

The handlers read their bodies themselves (so that errors come out in the client's
dialect), so Litestar cannot see their types; this module hands it the JSON Schemas that
msgspec derives from the same Structs the wire is decoded with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Litestar
from litestar._openapi.plugin import OpenAPIPlugin  # the app's OpenAPI document (no public accessor)
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody, Schema

from schemas.dialect import BodyKind, Endpoint

__all__ = ["add_dialect_schemas", "operation_class"]

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


def add_dialect_schemas(app: Litestar, endpoints: list[Endpoint[Any, Any]]) -> None:
    """Add every wire Struct of ``endpoints`` as a named schema to the app's OpenAPI document.

    Litestar rebuilds ``components.schemas`` from its own registry, so they are added to
    the built document (at startup, before it is first served).
    """
    types = [struct for endpoint in endpoints for struct in (endpoint.request_type, endpoint.response_type)]
    _, schemas = msgspec.json.schema_components(types, ref_template=REF)
    document = app.plugins.get(OpenAPIPlugin).provide_openapi()
    document.components.schemas.update({name: RawSchema(raw=schema) for name, schema in schemas.items()})
