"""Every dialect route is in the OpenAPI document, with its request and answer schemas, browsable at /docs."""

from __future__ import annotations

from litestar.testing import TestClient

from gateway.app import create_app
from gateway.request.mounts import MOUNTS


def test_every_dialect_route_is_documented_with_its_bodies() -> None:
    with TestClient(create_app()) as client:
        document = client.get("/docs/openapi.json").json()
        assert client.get("/docs").status_code == 200
    schemas = document["components"]["schemas"]
    for mount in MOUNTS:
        path = mount.prefix + mount.endpoint.path
        for method in mount.methods:
            operation = document["paths"][path][method.lower()]
            ((media, body),) = operation["requestBody"]["content"].items()
            assert media in ("application/json", "multipart/form-data")
            assert body["schema"]["$ref"].rsplit("/", 1)[1] == mount.endpoint.request_type.__name__
            answer = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
            assert answer.rsplit("/", 1)[1] in schemas
    assert "prompt" in schemas["MeliousGenerationRequest"]["required"]
    assert schemas["MeliousGenerationRequest"]["properties"]["n"]["maximum"] == 4
