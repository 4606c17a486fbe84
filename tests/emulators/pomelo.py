"""Pomelo emulator: `POST /api/v1/midjourney/generate` and `POST /api/v1/flux.1`,
each with its own response shape; URLs only; errors as
`{"status": "error", "error": {"code", "message"}}`.
"""

from __future__ import annotations

import random
import re
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from .base import DEFAULT_API_KEY, Emulator
from .errors import BY_CANONICAL, ProviderError
from .fields import Fields, check_content_policy
from .wire import Request, Response, json_response

MIDJOURNEY_MODELS: tuple[str, ...] = ("4", "5", "5.1", "5.2", "6", "6.1", "7")
MIN_SIDE, MAX_SIDE = 64, 2048
MAX_OUTPUTS = 4
MAX_STEPS = 50
MAX_SEED = 2**32 - 1
LONG_SIDE = 1024
MAX_RATIO = 4.0  # the widest aspect ratio accepted (either way)
_RATIO = re.compile(r"^(\d{1,3}):(\d{1,3})$")


def aspect_to_size(aspect_ratio: str) -> tuple[int, int] | None:
    """'W:H' to pixels: the long side is 1024, the short one rounded to a multiple of 64."""
    match = _RATIO.match(aspect_ratio)
    if match is None:
        return None
    w, h = int(match.group(1)), int(match.group(2))
    if not w or not h or max(w, h) / min(w, h) > MAX_RATIO:
        return None
    short = max(64, round(LONG_SIDE * min(w, h) / max(w, h) / 64) * 64)
    return (LONG_SIDE, short) if w >= h else (short, LONG_SIDE)


class PomeloEmulator(Emulator):
    """Pomelo (pomeloapi) image generation: Midjourney and Flux.1."""

    name = "pomelo"

    def __init__(self, api_key: str = DEFAULT_API_KEY, **kwargs: Any) -> None:
        super().__init__(api_key, **kwargs)
        self.add_route(["POST"], "/api/v1/midjourney/generate", self.midjourney)
        self.add_route(["POST"], "/api/v1/flux.1", self.flux)

    def provider_code(self, canonical: str) -> str:
        return BY_CANONICAL[canonical].block

    def envelope(self, error: ProviderError) -> dict[str, Any]:
        return {"status": "error", "error": {"code": self.code_of(error), "message": error.message}}

    async def midjourney(self, request: Request) -> Response:
        """`POST /api/v1/midjourney/generate`: num_outputs images of width x height."""
        fields = Fields(request.json_object())
        prompt = fields.prompt()
        fields.string("style")
        width = fields.integer("width", 512, MIN_SIDE, MAX_SIDE, canonical="invalid_size")
        height = fields.integer("height", 512, MIN_SIDE, MAX_SIDE, canonical="invalid_size")
        model = fields.text("model", "5")
        if model not in MIDJOURNEY_MODELS:
            raise ProviderError("model_not_found", f"Midjourney model '{model}' not found")
        count = fields.integer("num_outputs", 1, 1, MAX_OUTPUTS)
        check_content_policy(prompt)

        created_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        images = []
        for i in range(count):
            image_id = f"img_{secrets.token_hex(6)}"
            png = self.png(width, height, prompt, model, i, index=i)
            images.append({"url": self.publish(request, png, image_id), "id": image_id, "created_at": created_at})
        return json_response({"status": "success", "images": images, "prompt": prompt, "model": model})

    async def flux(self, request: Request) -> Response:
        """`POST /api/v1/flux.1`: one image at the aspect ratio's size; the seed is echoed."""
        fields = Fields(request.json_object())
        prompt = fields.prompt()
        fields.string("negative_prompt")
        fields.string("style")
        seed = fields.integer("seed", random.randint(0, MAX_SEED), 0, MAX_SEED)
        fields.integer("steps", 30, 1, MAX_STEPS)
        aspect_ratio = fields.text("aspect_ratio", "1:1")
        size = aspect_to_size(aspect_ratio)
        if size is None:
            raise ProviderError(
                "invalid_size", f"aspect_ratio '{aspect_ratio}' is not supported (use W:H, at most {MAX_RATIO:g}:1)"
            )
        check_content_policy(prompt)

        generation = secrets.token_hex(4)
        png = self.png(size[0], size[1], prompt, seed)
        url = self.publish(request, png, generation)
        return json_response(
            {
                "id": f"gen_{generation}",
                "created": int(time.time()),
                "images": [{"url": url, "width": size[0], "height": size[1]}],
                "prompt": prompt,
                "model": "flux.1",
                "seed": seed,
                "status": "complete",
            }
        )
