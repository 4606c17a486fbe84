"""OpenAPI for the dialect routes: made from the same table the pipeline serves (``gateway.routes.MOUNTS``).

The dialect routes are served by ``gateway.pipeline``, not by Litestar route handlers, so
Litestar cannot see them; this module adds each to the app's OpenAPI document, with the
JSON Schemas that msgspec derives from the same Structs the wire is decoded with. Each
operation lists the error statuses a client can get, each with its dialect's error envelope.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Litestar
from litestar._openapi.plugin import OpenAPIPlugin  # the app's OpenAPI document (no public accessor)
from litestar.enums import ParamType
from litestar.openapi.spec import (
    OpenAPIFormat,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    PathItem,
    Reference,
    RequestBody,
    Schema,
)

from gateway.request.streams import EVENT_STREAM, STREAM_EVENT_TYPES, streams
from schemas.dialect import BodyKind, Endpoint
from schemas.melious import MeliousError
from schemas.nebul import NebulError
from schemas.nebulablock import NebulaBlockError
from schemas.pomelo import PomeloError

__all__ = ["ERROR_ENVELOPES", "ERROR_STATUSES", "DocumentedRoute", "add_dialect_routes", "operation_class"]

REF = "#/components/schemas/{name}"
# Each dialect's error envelope (the OpenAI family answers in Nebul's, which is OpenAI's).
ERROR_ENVELOPES: dict[str, type] = {
    "melious": MeliousError,
    "nebul": NebulError,
    "openai": NebulError,
    "pomelo": PomeloError,
    "nebulablock": NebulaBlockError,
}
# The error statuses every dialect operation can answer (docs/errors.md has the codes behind them).
ERROR_STATUSES: dict[int, str] = {
    400: "The request is not valid in this dialect (the field is named in the message)",
    401: "No inbound API key, or one the gateway does not know",
    404: "No such model, or this key may not use it",
    413: "The body is larger than server.max_body_bytes, or an input image is too large",
    429: "A rate limit refused the request (Retry-After says when to try again)",
    502: "The upstream failed, or refused the gateway's own credentials",
    503: "Overloaded, or every target of the model is cooling down (Retry-After)",
    504: "The upstream did not answer in time",
}
_RETRY_AFTER: dict[str, OpenAPIHeader | Reference] = {
    "Retry-After": OpenAPIHeader(
        description="Seconds to wait before trying again", schema=Schema(type=OpenAPIType.INTEGER)
    )
}


@dataclass
class RawSchema(Schema):
    """A JSON Schema given as a plain dict (msgspec's), passed through as is."""

    raw: dict[str, Any] | None = None

    def to_schema(self) -> dict[str, Any]:
        return self.raw or {}


def _ref(struct: type) -> RawSchema:
    return RawSchema(raw={"$ref": REF.format(name=struct.__name__)})


# The data of each server-sent event of a streamed answer (``stream: true``).
_STREAM_EVENTS = RawSchema(raw={"oneOf": [{"$ref": REF.format(name=event.__name__)} for event in STREAM_EVENT_TYPES]})
_STREAMED = (
    "The generated images, in the dialect's answer; with `stream: true`, `text/event-stream`: "
    "`event: image_generation.partial_image` (`image_edit.partial_image` for edits) for each of up to "
    "`partial_images` previews, then `event: image_generation.completed` (`image_edit.completed`) with the "
    "final image; each event's `data:` line is the JSON named by its `type`. A failure after the stream "
    "began is `event: error` with the dialect's error body."
)


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
                if streams(endpoint):
                    answer.content[EVENT_STREAM] = OpenAPIMediaType(schema=_STREAM_EVENTS)  # type: ignore[union-attr]
                    answer.description = _STREAMED  # type: ignore[union-attr]
            self.responses = {**(self.responses or {}), **error_responses(endpoint)}

    return DialectOperation


def error_responses(endpoint: Endpoint[Any, Any]) -> dict[str, OpenAPIResponse]:
    """Every error status of ``endpoint``, each answered in its dialect's envelope."""
    envelope = {"application/json": OpenAPIMediaType(schema=_ref(ERROR_ENVELOPES[endpoint.dialect]))}
    return {
        str(status): OpenAPIResponse(
            description=description, content=envelope, headers=_RETRY_AFTER if status in (429, 503) else None
        )
        for status, description in ERROR_STATUSES.items()
    }


# Async jobs (gateway/jobs/service.py): every dialect route takes these headers and may answer 202.
JOB_PARAMETERS = (
    Parameter(
        name="Prefer",
        param_in=ParamType.HEADER,
        required=False,
        schema=Schema(type=OpenAPIType.STRING),
        description=(
            "RFC 7240. `respond-async`: answer 202 at once and run the request as a job (GET /v1/jobs/{id}); "
            "with `wait=N`, the plain answer when the job ends within N seconds. Malformed: 400."
        ),
    ),
    Parameter(
        name="X-Webhook-URL",
        param_in=ParamType.HEADER,
        required=False,
        schema=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.URI),
        description="With `Prefer: respond-async`: where the job's end is POSTed (Standard Webhooks), if the key may.",
    ),
)
# Idempotent retries (gateway/request/idempotency.py): every dialect route takes the key.
IDEMPOTENCY_KEY = Parameter(
    name="Idempotency-Key",
    param_in=ParamType.HEADER,
    required=False,
    schema=Schema(type=OpenAPIType.STRING, max_length=257),
    description=(
        "draft-ietf-httpapi-idempotency-key-header: a Structured Field string (or a bare key) of at most "
        "`server.idempotency.max_key_chars` characters. A repeat of the same request under the same key, "
        "from the same inbound key, within `server.idempotency.ttl_s`, gets the first answer (or job), marked "
        "`Idempotent-Replayed: true`, and nothing is generated again; one while the first runs waits for it. "
        "Another request under a used key: 422. Malformed: 400."
    ),
)
JOB_ACCEPTED = OpenAPIResponse(
    description="Accepted as a job (`Prefer: respond-async`): poll `Location`.",
    headers={
        "Location": OpenAPIHeader(schema=Schema(type=OpenAPIType.STRING), description="/v1/jobs/{id}"),
        "Preference-Applied": OpenAPIHeader(schema=Schema(type=OpenAPIType.STRING), description="respond-async"),
    },
    content={
        "application/json": OpenAPIMediaType(
            schema=Schema(
                type=OpenAPIType.OBJECT,
                required=["id", "status", "created_at"],
                properties={
                    "id": Schema(type=OpenAPIType.STRING),
                    "status": Schema(type=OpenAPIType.STRING, const="queued"),
                    "created_at": Schema(type=OpenAPIType.INTEGER, description="unix seconds"),
                },
            )
        )
    },
)


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
        parameters=[*JOB_PARAMETERS, IDEMPOTENCY_KEY],
        responses={
            "200": OpenAPIResponse(description="The generated images, in the dialect's answer."),
            "202": JOB_ACCEPTED,
        },
    )


def add_dialect_routes(app: Litestar, routes: list[DocumentedRoute]) -> None:
    """Add every route and every wire Struct of ``routes`` to the app's OpenAPI document.

    Litestar rebuilds ``components.schemas`` from its own registry, so they are added to
    the built document (at startup, before it is first served).
    """
    endpoints = [route.endpoint for route in routes]
    types = [struct for endpoint in endpoints for struct in (endpoint.request_type, endpoint.response_type)]
    types += list(dict.fromkeys(ERROR_ENVELOPES.values()))
    types += STREAM_EVENT_TYPES
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
