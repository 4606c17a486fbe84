"""NebulaBlock emulator, both API generations:

- `POST` (and `GET` with a JSON body) `/api/v1/images/generation`: one base64 image,
  optionally image-to-image / inpainting from base64 `image` and `mask`;
- `POST /v1/images/generate`: n images as URLs (default) or base64.

Errors: `{"status": "error", "error": {"code", "message", "details": {"reason"}}}`.
"""

from __future__ import annotations

import time
from typing import Any

from .base import DEFAULT_API_KEY, Emulator
from .errors import BY_CANONICAL, ProviderError
from .fields import Fields, b64, check_content_policy, decoded_image, parse_size
from .wire import Request, Response, json_response

MODELS: tuple[str, ...] = (
    "stabilityai/stable-diffusion-xl-base-1.0",
    "black-forest-labs/FLUX.1-schnell",
    "black-forest-labs/FLUX.1-Fill-dev",
    "dall-e-3",
    "sdxl",
)
INPAINTING_MODELS: frozenset[str] = frozenset({"black-forest-labs/FLUX.1-Fill-dev"})
MIN_SIDE, MAX_SIDE = 64, 2048
MAX_N = 10


class NebulaBlockEmulator(Emulator):
    """NebulaBlock (api.nebulablock.com / api.inference.nebulablock.com) images."""

    name = "nebulablock"

    def __init__(self, api_key: str = DEFAULT_API_KEY, **kwargs: Any) -> None:
        super().__init__(api_key, **kwargs)
        self.add_route(["POST", "GET"], "/api/v1/images/generation", self.generation)
        self.add_route(["POST"], "/v1/images/generate", self.generate)

    def provider_code(self, canonical: str) -> str:
        return BY_CANONICAL[canonical].block

    def envelope(self, error: ProviderError) -> dict[str, Any]:
        return {
            "status": "error",
            "error": {
                "code": self.code_of(error),
                "message": error.message,
                "details": {"reason": error.reason or error.message},
            },
        }

    async def generation(self, request: Request) -> Response:
        """`/api/v1/images/generation`: one image of width x height, base64."""
        started = time.perf_counter()
        fields = Fields(request.json_object())
        model = _model(fields)
        prompt = fields.prompt()
        fields.integer("num_steps", 25, 1, 100)
        fields.number("guidance_scale", 7.5, 0, 50)
        width = fields.integer("width", 1024, MIN_SIDE, MAX_SIDE, canonical="invalid_size")
        height = fields.integer("height", 1024, MIN_SIDE, MAX_SIDE, canonical="invalid_size")
        fields.string("negative_prompt")
        image = fields.raw("image")
        mask = fields.raw("mask")
        if image is not None:
            decoded_image(image, "image")
        if mask is not None:
            if image is None:
                raise ProviderError("invalid_request", "'mask' needs an 'image'", reason="mask without image")
            decoded_image(mask, "mask")
        if model in INPAINTING_MODELS and image is None:
            raise ProviderError(
                "operation_not_supported",
                f"{model} is an image-to-image model: send 'image' (and 'mask')",
                reason="Text-to-image is not supported by this model",
            )
        check_content_policy(prompt)

        png = self.png(width, height, prompt, model, image is not None)
        encoded = b64(png)
        inference = time.perf_counter() - started
        return json_response(
            {
                "model": model,
                "object": "list",
                "data": [{"timings": {"inference": inference}, "index": 0, "b64_json": encoded}],
                "message": "Image generated successfully",
                "status": "success",
            }
        )

    async def generate(self, request: Request) -> Response:
        """`POST /v1/images/generate`: n images of `size`, as URLs or base64."""
        fields = Fields(request.json_object())
        model = _model(fields)
        prompt = fields.prompt()
        n = fields.integer("n", 1, 1, MAX_N)
        size = fields.text("size", "1024x1024")
        dims = parse_size(size, MIN_SIDE, MAX_SIDE)
        if dims is None:
            raise ProviderError(
                "invalid_size",
                f"Requested size '{size}' is not supported",
                reason=f"size must be WIDTHxHEIGHT with sides between {MIN_SIDE} and {MAX_SIDE}",
            )
        fields.choice("quality", ("standard", "hd"), "standard")
        fields.choice("style", ("natural", "vivid", "artistic"), "natural")
        fields.string("negative_prompt")
        response_format = fields.choice("response_format", ("url", "b64_json"), "url")
        check_content_policy(prompt)

        images = []
        for i in range(n):
            png = self.png(dims[0], dims[1], prompt, model, i, index=i)
            if response_format == "b64_json":
                images.append({"url": None, "b64_json": b64(png)})
            else:
                images.append({"url": self.publish(request, png), "b64_json": None})
        return json_response(
            {"status": "success", "data": {"images": images, "usage": {"images_generated": n, "resolution": size}}}
        )


def _model(fields: Fields) -> str:
    """The required model field; it must be one NebulaBlock serves."""
    model = fields.required_string("model")
    if model not in MODELS:
        raise ProviderError("model_not_found", f"Model '{model}' not found", reason="Unknown model")
    return model
