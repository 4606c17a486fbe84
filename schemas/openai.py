"""The root OpenAI family (``/v1/images/{generations,edits,variations}``): the union of Melious and Nebul.

Requests take Nebul's fields (a superset of Melious's) with OpenAI's defaults; unknown
fields the ``openai`` SDK may send (``style``, ...) are ignored; ``stream`` and ``partial_images``
answer server-sent events (``gateway.streams``) on generations and edits. Responses are
Nebul's ``ImageResponse`` plus Melious's ``environment_impact`` when the result has one.
The endpoints are Nebul's, parametrised with these Structs; no provider speaks this
dialect, but the outbound mappings work all the same, inherited from Nebul.
"""

from __future__ import annotations

from typing import Annotated, cast

import msgspec

from schemas import nebul
from schemas.canonical import EnvironmentImpact, ImageRequest, ImageResult
from schemas.melious import MeliousEnvironmentImpact

__all__ = [
    "EDITS",
    "ERRORS",
    "GENERATIONS",
    "VARIATIONS",
    "OpenAIEditRequest",
    "OpenAIGenerationRequest",
    "OpenAIImageResponse",
    "OpenAIVariationRequest",
]

DEFAULT_MODEL = "flux-schnell"
DEFAULT_RESPONSE_FORMAT: nebul.ResponseFormatName = "url"
# OpenAI's ``output_compression`` (jpeg and webp, 0-100); Nebul's document has no such field.
Compression = Annotated[int, msgspec.Meta(ge=0, le=100)]


class OpenAIGenerationRequest(nebul.NebulGenerationRequest, kw_only=True, omit_defaults=True):
    """Nebul's generation request with OpenAI's defaults: ``url`` images, Melious's default model."""

    model: nebul.Model = DEFAULT_MODEL
    response_format: nebul.ResponseFormatName = DEFAULT_RESPONSE_FORMAT
    output_compression: Compression | None = None


class OpenAIEditRequest(nebul.NebulEditRequest, kw_only=True, omit_defaults=True):
    """Nebul's edit request answering ``url`` images unless asked otherwise."""

    response_format: nebul.ResponseFormatName = DEFAULT_RESPONSE_FORMAT
    output_compression: Compression | None = None


class OpenAIVariationRequest(nebul.NebulVariationRequest, kw_only=True, omit_defaults=True):
    """Nebul's variation request answering ``url`` images unless asked otherwise."""

    response_format: nebul.ResponseFormatName = DEFAULT_RESPONSE_FORMAT
    output_compression: Compression | None = None


_COMPRESSED = (OpenAIGenerationRequest, OpenAIEditRequest, OpenAIVariationRequest)


def _with_compression(request: ImageRequest, wire: object) -> ImageRequest:
    """``request`` with the client's ``output_compression``, when it gave one."""
    if isinstance(wire, _COMPRESSED) and wire.output_compression is not None:
        return msgspec.structs.replace(request, output_compression=wire.output_compression)
    return request


class OpenAIImageResponse(nebul.NebulImageResponse, kw_only=True):
    """Nebul's ``ImageResponse``; ``environment_impact`` is left out unless the backend reported one."""

    environment_impact: MeliousEnvironmentImpact | msgspec.UnsetType = msgspec.UNSET


class _WithEnvironmentImpact(nebul.NebulEndpoint[nebul.RequestT]):
    """Carries Melious's ``environment_impact`` on top of Nebul's response, both ways."""

    dialect = "openai"
    response_type = OpenAIImageResponse

    def encode_result(self, result: ImageResult, request: ImageRequest) -> OpenAIImageResponse:
        response = cast(OpenAIImageResponse, super().encode_result(result, request))  # built from response_type
        if result.environment_impact is not None:
            response.environment_impact = msgspec.convert(
                msgspec.to_builtins(result.environment_impact), MeliousEnvironmentImpact
            )
        return response

    def decode_result(self, wire: nebul.NebulImageResponse, request: ImageRequest) -> ImageResult:
        result = super().decode_result(wire, request)
        if isinstance(wire, OpenAIImageResponse) and wire.environment_impact is not msgspec.UNSET:
            result.environment_impact = msgspec.convert(msgspec.to_builtins(wire.environment_impact), EnvironmentImpact)
        return result


class Generations(_WithEnvironmentImpact[OpenAIGenerationRequest], nebul.Generations):
    request_type = OpenAIGenerationRequest

    def to_canonical(self, wire: nebul.NebulGenerationRequest) -> ImageRequest:
        return _with_compression(super().to_canonical(wire), wire)


class Edits(_WithEnvironmentImpact[OpenAIEditRequest], nebul.Edits):
    request_type = OpenAIEditRequest

    def to_canonical(self, wire: nebul.NebulEditRequest) -> ImageRequest:
        return _with_compression(super().to_canonical(wire), wire)


class Variations(_WithEnvironmentImpact[OpenAIVariationRequest], nebul.Variations):
    request_type = OpenAIVariationRequest

    def to_canonical(self, wire: nebul.NebulVariationRequest) -> ImageRequest:
        return _with_compression(super().to_canonical(wire), wire)


GENERATIONS = Generations()
EDITS = Edits()
VARIATIONS = Variations()

ERRORS = nebul.ERRORS
