"""Nebul emulator: OpenAI-compatible generations (JSON), edits and variations
(multipart), answering the OpenAI ImageResponse shape and the OpenAI error envelope
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .base import DEFAULT_API_KEY, Emulator
from .errors import BY_CANONICAL, BY_OPENAI_CODE, ProviderError, openai_type
from .fields import Fields, b64, check_content_policy, parse_size, require_image
from .wire import Request, Response, json_response

MODELS: tuple[str, ...] = ("black-forest-labs/FLUX.1-Kontext-dev",)
DEFAULT_MODEL = MODELS[0]
AUTO_SIZE = (1024, 1024)
MIN_SIDE, MAX_SIDE = 256, 2048
MAX_N = 10
MAX_INPUT_IMAGES = 16
QUALITIES = ("auto", "low", "medium", "high", "standard", "hd")
BACKGROUNDS = ("auto", "transparent", "opaque")
OUTPUT_FORMATS = ("png", "jpeg", "webp")
RESPONSE_FORMATS = ("b64_json", "url")


@dataclass(frozen=True)
class Options:
    """The output options the three endpoints share."""

    n: int
    size: str  # echoed as sent ("auto" when absent)
    dims: tuple[int, int] | None  # None for "auto"
    quality: str
    background: str
    output_format: str
    response_format: str


class NebulEmulator(Emulator):
    """Nebul (api.inference.nebul.io) images: generations, edits, variations."""

    name = "nebul"

    def __init__(self, api_key: str = DEFAULT_API_KEY, **kwargs: Any) -> None:
        super().__init__(api_key, **kwargs)
        self.add_route(["POST"], "/v1/images/generations", self.generations)
        self.add_route(["POST"], "/v1/images/edits", self.edits)
        self.add_route(["POST"], "/v1/images/variations", self.variations)

    def provider_code(self, canonical: str) -> str:
        return BY_CANONICAL[canonical].openai_code

    def envelope(self, error: ProviderError) -> dict[str, Any]:
        # A fault may name any code: its type follows the code's row when the table has it.
        row = BY_OPENAI_CODE.get(error.code or "", BY_CANONICAL[error.canonical])
        kind = openai_type(row.status)
        return {"error": {"message": error.message, "type": kind, "param": error.param, "code": self.code_of(error)}}

    # ----- endpoints

    async def generations(self, request: Request) -> Response:
        """`POST /v1/images/generations` (JSON)."""
        fields = Fields(request.json_object())
        prompt = fields.prompt()
        model = _model(fields, required=False)
        options = _options(fields)
        check_content_policy(prompt)
        return self._answer(request, options, options.dims or AUTO_SIZE, prompt, model)

    async def edits(self, request: Request) -> Response:
        """`POST /v1/images/edits` (multipart): images (`image` or `image[]`), optional mask."""
        form = request.form()
        fields = Fields(form.texts(), from_form=True)
        model = _model(fields, required=True)
        prompt = fields.prompt()
        images = form.files("image", "image[]")
        if not images:
            raise ProviderError("invalid_request", "'image' is required: send one or more image files", param="image")
        if len(images) > MAX_INPUT_IMAGES:
            raise ProviderError("invalid_request", f"at most {MAX_INPUT_IMAGES} images may be sent", param="image")
        sizes = [require_image(upload.data, "image") for upload in images]
        masks = form.files("mask")
        if masks and require_image(masks[0].data, "mask") != sizes[0]:
            raise ProviderError("invalid_request", "'mask' must have the same dimensions as the image", param="mask")
        options = _options(fields)
        check_content_policy(prompt)
        return self._answer(request, options, options.dims or sizes[0], prompt, model)

    async def variations(self, request: Request) -> Response:
        """`POST /v1/images/variations` (multipart): exactly one image."""
        form = request.form()
        fields = Fields(form.texts(), from_form=True)
        model = _model(fields, required=False)
        images = form.files("image", "image[]")
        if len(images) != 1:
            raise ProviderError("invalid_request", "'image' is required: send exactly one image file", param="image")
        size = require_image(images[0].data, "image")
        options = _options(fields)
        return self._answer(request, options, options.dims or size, "", model)

    # ----- answer

    def _answer(self, request: Request, options: Options, dims: tuple[int, int], prompt: str, model: str) -> Response:
        """The ImageResponse for `options.n` images of `dims`."""
        images = [self.png(dims[0], dims[1], prompt, model, request.path, i, index=i) for i in range(options.n)]
        if options.response_format == "url":
            data = [{"b64_json": None, "url": self.publish(request, png)} for png in images]
        else:
            data = [{"b64_json": b64(png), "url": None} for png in images]
        tokens = len(prompt.split())
        return json_response(
            {
                "created": int(time.time()),
                "data": data,
                "background": options.background,
                "output_format": options.output_format,
                "size": options.size,
                "quality": options.quality,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )


def _model(fields: Fields, *, required: bool) -> str:
    """The model field: required for edits, defaulted otherwise; must be known."""
    model = fields.required_string("model") if required else fields.text("model", DEFAULT_MODEL)
    if model not in MODELS:
        raise ProviderError("model_not_found", f"The model '{model}' does not exist", param="model")
    return model


def _options(fields: Fields) -> Options:
    """Read (and check) the fields the three endpoints share."""
    fields.number("guidance", None, 0, 100)
    fields.string("user")
    n = fields.integer("n", 1, 1, MAX_N)
    size = fields.text("size", "auto")
    dims = None if size == "auto" else parse_size(size, MIN_SIDE, MAX_SIDE)
    if size != "auto" and dims is None:
        raise ProviderError(
            "invalid_size",
            f"Invalid size '{size}': use 'auto' or WIDTHxHEIGHT with sides between {MIN_SIDE} and {MAX_SIDE}",
            param="size",
        )
    return Options(
        n=n,
        size=size,
        dims=dims,
        quality=fields.choice("quality", QUALITIES, "auto"),
        background=fields.choice("background", BACKGROUNDS, "auto"),
        output_format=fields.choice("output_format", OUTPUT_FORMATS, "png"),
        response_format=fields.choice("response_format", RESPONSE_FORMATS, "b64_json"),
    )
