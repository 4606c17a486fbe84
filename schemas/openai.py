"""The root OpenAI family (``/v1/images/{generations,edits,variations}``), as OpenAI's published document has it.

Requests take Nebul's fields (a superset of Melious's) with OpenAI's defaults, plus the documented
extensions ``seed``, ``steps`` and ``negative_prompt`` (``guidance`` is Nebul's already), as
vLLM-Omni's and SGLang's OpenAI-compatible image servers take them; unknown fields the ``openai``
SDK may send (``style``, ``moderation``, ...) are ignored; ``stream`` and ``partial_images`` answer
server-sent events (``gateway.streams``) on generations and edits. With no ``response_format``, a GPT
image model name answers ``b64_json`` as at OpenAI, any other the model's configured default
(``gateway.routes.answer_form``). Responses are OpenAI's ``ImagesResponse`` (fields absent rather than
null, ``usage`` in its shape, the produced settings where its enums can say them), plus Melious's
``environment_impact`` when the result has one; tests/specs/ holds the document they are checked against.
The endpoints are Nebul's, parametrised with these Structs; no provider speaks this dialect, but the
outbound mappings work all the same.
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any, TypeVar

import msgspec

from schemas import nebul
from schemas.canonical import (
    EnvironmentImpact,
    GeneratedImage,
    ImageRequest,
    ImageResult,
    ResponseFormat,
    Usage,
)
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
# The model names OpenAI answers base64 for, whatever the client asks (its GPT image models): a client
# that names no ``response_format`` gets ``b64_json`` for them here too, as the ``openai`` SDKs expect.
GPT_IMAGE_MODEL = re.compile(r"^(gpt-image-|chatgpt-image-)")
# OpenAI's ``output_compression`` (jpeg and webp, 0-100); Nebul's document has no such field.
Compression = Annotated[int, msgspec.Meta(ge=0, le=100)]
# The documented extensions (vLLM-Omni's and SGLang's OpenAI-compatible image servers take them the same
# way): each target checks them against its own range (a model's most steps, a provider's seeds).
MAX_SEED = 2**63 - 1  # what msgspec bounds (int64); the local engine takes up to 2**64 - 1 - n
Seed = Annotated[int, msgspec.Meta(ge=0, le=MAX_SEED)]
Steps = Annotated[int, msgspec.Meta(ge=1)]


class OpenAIGenerationRequest(nebul.NebulGenerationRequest, kw_only=True, omit_defaults=True):
    """Nebul's generation request with OpenAI's defaults (Melious's default model) and the extensions."""

    model: nebul.Model = DEFAULT_MODEL
    # None: the model's default (with_answer_form); wider than Nebul's, which always has one.
    response_format: nebul.ResponseFormatName | None = None  # type: ignore[assignment]
    output_compression: Compression | None = None
    seed: Seed | None = None
    steps: Steps | None = None
    negative_prompt: str | None = None


# The model a client that names none asks for, where OpenAI's document gives one (generations keep
# Melious's default, as the root family always had): LiteLLM's ``image_variation`` sends no ``model``.
DEFAULT_EDIT_MODEL = "gpt-image-1.5"
DEFAULT_VARIATION_MODEL = "dall-e-2"


class OpenAIEditRequest(nebul.NebulEditRequest, kw_only=True, omit_defaults=True):
    """Nebul's edit request with OpenAI's defaults and the extensions."""

    model: nebul.Model = DEFAULT_EDIT_MODEL

    response_format: nebul.ResponseFormatName | None = None  # type: ignore[assignment]
    output_compression: Compression | None = None
    seed: Seed | None = None
    steps: Steps | None = None
    negative_prompt: str | None = None


class OpenAIVariationRequest(nebul.NebulVariationRequest, kw_only=True, omit_defaults=True):
    """Nebul's variation request with OpenAI's defaults and the extensions."""

    model: nebul.Model = DEFAULT_VARIATION_MODEL

    response_format: nebul.ResponseFormatName | None = None  # type: ignore[assignment]
    output_compression: Compression | None = None
    seed: Seed | None = None
    steps: Steps | None = None
    negative_prompt: str | None = None


OpenAIRequest = OpenAIGenerationRequest | OpenAIEditRequest | OpenAIVariationRequest
WireT = TypeVar("WireT", OpenAIGenerationRequest, OpenAIEditRequest, OpenAIVariationRequest)


def is_gpt_image_model(name: str) -> bool:
    """Whether OpenAI treats ``name`` as a GPT image model (``gpt-image-1``, ``chatgpt-image-latest``, ...)."""
    return GPT_IMAGE_MODEL.match(name) is not None


def with_answer_form(wire: WireT) -> WireT:
    """``wire`` with a ``response_format``: the client's, else ``b64_json`` for a GPT image model's name
    (as OpenAI answers), else ``url`` (which a model's ``default_response_format`` may replace)."""
    if wire.response_format is not None:
        return wire
    chosen: nebul.ResponseFormatName = "b64_json" if is_gpt_image_model(wire.model) else DEFAULT_RESPONSE_FORMAT
    return msgspec.structs.replace(wire, response_format=chosen)


def with_openai_fields(request: ImageRequest, wire: OpenAIRequest) -> ImageRequest:
    """``request`` (Nebul's mapping of ``wire``) with what the root family adds: ``output_compression``, the
    extensions, and whether the model's configured default answer form may stand in for the client's."""
    return msgspec.structs.replace(
        request,
        output_compression=wire.output_compression,
        seed=wire.seed,
        steps=wire.steps,
        negative_prompt=wire.negative_prompt,
        response_format_defaulted=wire.response_format is None and not is_gpt_image_model(wire.model),
    )


# What OpenAI's document lets ``ImagesResponse`` say of each setting; a value outside it is left out.
ANSWER_SIZES = frozenset({"1024x1024", "1024x1536", "1536x1024"})
ANSWER_QUALITIES = frozenset({"low", "medium", "high"})
ANSWER_BACKGROUNDS = frozenset({"transparent", "opaque"})
OUTPUT_FORMATS: dict[str, str] = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}
ANSWER_FORMATS = frozenset(OUTPUT_FORMATS.values())


class OpenAIImage(msgspec.Struct, kw_only=True):
    """One entry of ``data``: only the form the client asked for (absent, never null), and the
    prompt a provider says it drew from, when it says one. Null is read (a provider may write it), never written."""

    b64_json: str | msgspec.UnsetType | None = msgspec.UNSET
    url: str | msgspec.UnsetType | None = msgspec.UNSET
    revised_prompt: str | msgspec.UnsetType | None = msgspec.UNSET


class InputTokensDetails(msgspec.Struct, kw_only=True):
    image_tokens: int = 0
    text_tokens: int = 0


class OpenAIUsage(msgspec.Struct, kw_only=True):
    """``usage`` in OpenAI's shape (``ImageGenUsage``, ``ImagesUsage``): tokens as the backend counted them.

    Diffusion backends count none: every number is 0 then (docs/operations.md).
    """

    input_tokens: int = 0
    input_tokens_details: InputTokensDetails = msgspec.field(default_factory=InputTokensDetails)
    output_tokens: int = 0
    total_tokens: int = 0


def usage_of(usage: Usage) -> OpenAIUsage:
    """The canonical counts in OpenAI's shape: the prompt's tokens are text input, the rest output."""
    prompt_tokens, total_tokens = usage.prompt_tokens, usage.total_tokens
    return OpenAIUsage(
        input_tokens=prompt_tokens,
        input_tokens_details=InputTokensDetails(text_tokens=prompt_tokens),
        output_tokens=max(0, total_tokens - prompt_tokens),
        total_tokens=max(total_tokens, prompt_tokens),
    )


def produced(request: ImageRequest, images: list[GeneratedImage]) -> dict[str, Any]:
    """``size``, ``quality``, ``background`` and ``output_format`` as the answer may state them: what was
    produced (the images' own size and type where known, else what the backend was asked for), each
    left out when it is unknown or not a value OpenAI's document allows there (``auto`` never is)."""
    sizes = {f"{image.width}x{image.height}" if image.width and image.height else request.size for image in images}
    size = sizes.pop() if len(sizes) == 1 else None if sizes else request.size
    formats = {OUTPUT_FORMATS.get(image.media_type) for image in images}
    output_format = formats.pop() if len(formats) == 1 else None if formats else request.output_format
    stated = {
        "size": (size, ANSWER_SIZES),
        "quality": (request.quality, ANSWER_QUALITIES),
        "background": (request.background, ANSWER_BACKGROUNDS),
        "output_format": (output_format, ANSWER_FORMATS),
    }
    return {name: value for name, (value, allowed) in stated.items() if value in allowed}


class OpenAIImageResponse(msgspec.Struct, kw_only=True):
    """OpenAI's ``ImagesResponse``, as its published document has it: settings only where known,
    ``usage`` in its shape; Melious's ``environment_impact`` beside them when the backend reported one."""

    created: int
    data: list[OpenAIImage] = []
    background: str | msgspec.UnsetType | None = msgspec.UNSET
    output_format: str | msgspec.UnsetType | None = msgspec.UNSET
    size: str | msgspec.UnsetType | None = msgspec.UNSET
    quality: str | msgspec.UnsetType | None = msgspec.UNSET
    usage: OpenAIUsage = msgspec.field(default_factory=OpenAIUsage)
    environment_impact: MeliousEnvironmentImpact | msgspec.UnsetType = msgspec.UNSET


def _unset_if_none(value: Any) -> Any:
    return msgspec.UNSET if value is None else value


class _OpenAIAnswers(nebul.NebulEndpoint[nebul.RequestT]):
    """OpenAI's ``ImagesResponse`` both ways, with Melious's ``environment_impact`` when there is one."""

    dialect = "openai"
    response_type = OpenAIImageResponse  # type: ignore[assignment]

    def encode_result(self, result: ImageResult, request: ImageRequest) -> OpenAIImageResponse:  # type: ignore[override]
        if request.response_format is ResponseFormat.B64_JSON:
            data = [
                OpenAIImage(b64_json=_unset_if_none(image.as_json_b64()), revised_prompt=_revised(image))
                for image in result.images
            ]
        else:
            data = [
                OpenAIImage(url=_unset_if_none(image.url), revised_prompt=_revised(image)) for image in result.images
            ]
        response = OpenAIImageResponse(
            created=result.created, data=data, usage=usage_of(result.usage), **produced(request, result.images)
        )
        if result.environment_impact is not None:
            response.environment_impact = msgspec.convert(
                msgspec.to_builtins(result.environment_impact), MeliousEnvironmentImpact
            )
        return response

    def decode_result(self, wire: OpenAIImageResponse, request: ImageRequest) -> ImageResult:  # type: ignore[override]
        output_format = wire.output_format if isinstance(wire.output_format, str) else nebul.DEFAULT_OUTPUT_FORMAT
        media_type = nebul.MEDIA_TYPES.get(output_format, nebul.MEDIA_TYPES["png"])
        result = ImageResult(
            images=[
                GeneratedImage(
                    b64_json=_none_if_unset(item.b64_json),
                    url=_none_if_unset(item.url),
                    revised_prompt=_none_if_unset(item.revised_prompt),
                    width=request.width,
                    height=request.height,
                    media_type=media_type,
                )
                for item in wire.data
            ],
            created=wire.created or int(time.time()),
            model=request.model,
            usage=Usage(prompt_tokens=wire.usage.input_tokens, total_tokens=wire.usage.total_tokens),
        )
        if wire.environment_impact is not msgspec.UNSET:
            result.environment_impact = msgspec.convert(msgspec.to_builtins(wire.environment_impact), EnvironmentImpact)
        return result


def _revised(image: GeneratedImage) -> str | msgspec.UnsetType:
    return msgspec.UNSET if image.revised_prompt is None else image.revised_prompt


def _none_if_unset(value: Any) -> Any:
    return None if value is msgspec.UNSET else value


class Generations(_OpenAIAnswers[OpenAIGenerationRequest], nebul.Generations):
    request_type = OpenAIGenerationRequest

    def to_canonical(self, wire: nebul.NebulGenerationRequest) -> ImageRequest:
        assert isinstance(wire, OpenAIGenerationRequest)
        return with_openai_fields(super().to_canonical(with_answer_form(wire)), wire)


class Edits(_OpenAIAnswers[OpenAIEditRequest], nebul.Edits):
    request_type = OpenAIEditRequest

    def to_canonical(self, wire: nebul.NebulEditRequest) -> ImageRequest:
        assert isinstance(wire, OpenAIEditRequest)
        return with_openai_fields(super().to_canonical(with_answer_form(wire)), wire)


class Variations(_OpenAIAnswers[OpenAIVariationRequest], nebul.Variations):
    request_type = OpenAIVariationRequest

    def to_canonical(self, wire: nebul.NebulVariationRequest) -> ImageRequest:
        assert isinstance(wire, OpenAIVariationRequest)
        return with_openai_fields(super().to_canonical(with_answer_form(wire)), wire)


GENERATIONS = Generations()
EDITS = Edits()
VARIATIONS = Variations()

ERRORS = nebul.ERRORS
