"""Melious emulator: the OpenAI-compatible `POST /v1/images/generations` with its
`environment_impact` block, and the `{"error": {"code", "message"}}` envelope.
"""

from __future__ import annotations

import time
from typing import Any

from .base import DEFAULT_API_KEY, Emulator
from .errors import BY_CANONICAL, ProviderError
from .fields import Fields, b64, check_content_policy, parse_size
from .wire import Request, Response, json_response

MODELS: tuple[str, ...] = (
    "flux-schnell",
    "flux-dev",
    "sdxl-base-1.0",
    "sdxl-base-v10",
    "sdxl-lightning-4step",
    "sdxl-lightning-8step",
)
SIZES: tuple[str, ...] = ("512x512", "768x768", "1024x1024", "1024x768", "768x1024", "1280x720", "720x1280")
DEFAULT_MODEL = "flux-schnell"
DEFAULT_SIZE = "1024x1024"


class MeliousEmulator(Emulator):
    """Melious (api.melious.ai) image generation."""

    name = "melious"

    def __init__(self, api_key: str = DEFAULT_API_KEY, **kwargs: Any) -> None:
        super().__init__(api_key, **kwargs)
        self.add_route(["POST"], "/v1/images/generations", self.generations)

    def provider_code(self, canonical: str) -> str:
        return BY_CANONICAL[canonical].melious

    def envelope(self, error: ProviderError) -> dict[str, Any]:
        return {"error": {"code": self.code_of(error), "message": error.message}}

    async def generations(self, request: Request) -> Response:
        """`POST /v1/images/generations`: validate, then answer n solid PNGs."""
        fields = Fields(request.json_object())
        prompt = fields.prompt()
        model = fields.text("model", DEFAULT_MODEL)
        if model not in MODELS:
            raise ProviderError("model_not_found", f"Model '{model}' not found", param="model")
        n = fields.integer("n", 1, 1, 4)
        size = fields.text("size", DEFAULT_SIZE)
        if size not in SIZES:
            raise ProviderError("invalid_size", f"Size '{size}' is not supported; use one of {', '.join(SIZES)}")
        response_format = fields.choice("response_format", ("url", "b64_json"), "url")
        fields.string("user")
        check_content_policy(prompt)

        width, height = parse_size(size, 1, 4096) or (1024, 1024)
        images = [self.png(width, height, prompt, model, i, index=i) for i in range(n)]
        if response_format == "b64_json":
            data = [{"b64_json": b64(png)} for png in images]
        else:
            data = [{"url": self.publish(request, png)} for png in images]
        return json_response(
            {"created": int(time.time()), "data": data, "environment_impact": _impact(n, width * height)}
        )


def _impact(n: int, pixels: int) -> dict[str, Any]:
    """A plausible environment_impact block, scaled by image count and area."""
    scale = n * pixels / (1024 * 1024)
    return {
        "carbon_g_co2": round(2.5 * scale, 4),
        "water_liters": round(0.01 * scale, 5),
        "energy_kwh": round(0.005 * scale, 6),
        "renewable_percent": 85,
        "provider_id": "nebius",
        "location": "NL",
    }
