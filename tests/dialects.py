"""What a client of each dialect endpoint sends, and where it finds the images: one table for the suite.

``CALLS`` has an entry for every endpoint in ``gateway.request.mounts.MOUNTS`` (the matrix test checks it):
the operation the endpoint asks for, the request (``httpx`` keyword arguments) for a model name and a
square side, the size of the image that comes back, and whether the endpoint streams (OpenAI's
server-sent events). ``image_pointers`` reads the images out of any of the dialects' answers.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from schemas import melious, nebul, nebulablock, openai, pomelo
from schemas.dialect import Endpoint
from tests.emulators import solid_png

__all__ = ["CALLS", "INBOUND", "PROMPT", "Call", "image_pointers", "png_of"]

PROMPT = "A serene mountain landscape at sunset"
EDIT_PROMPT = "add a red hat"
INPUT_PNG = solid_png(64, 64, (40, 80, 120))


@dataclass(frozen=True)
class Call:
    """How a client of one endpoint asks for one image of ``side`` x ``side`` pixels from ``model``."""

    operation: str  # "generate", "edit" or "variation": what the canonical request does
    request: Callable[[str, int], dict[str, Any]]  # (model, side) -> httpx keyword arguments (json=... or data/files)
    size: Callable[[int], tuple[int, int]] = lambda side: (side, side)  # the size of the answer's image
    streams: bool = False  # answers server-sent events when asked to (``stream: true``)
    form: bool = False  # a multipart form (``data``/``files``), not JSON
    min_side: int = 1  # the smallest square the dialect can ask for (Melious has a fixed list: 512x512 up)


def flux_ratio(side: int) -> str:
    return "1:1" if side >= 512 else "16:1"


def _image() -> dict[str, Any]:
    return {"image": ("in.png", INPUT_PNG, "image/png")}


CALLS: Mapping[Endpoint[Any, Any], Call] = {
    melious.GENERATIONS: Call(
        "generate",
        lambda model, side: {"json": {"model": model, "prompt": PROMPT, "size": f"{side}x{side}", "n": 1}},
        min_side=512,
    ),
    nebul.GENERATIONS: Call(
        "generate",
        lambda model, side: {
            "json": {"model": model, "prompt": PROMPT, "size": f"{side}x{side}", "response_format": "b64_json"}
        },
        streams=True,
    ),
    nebul.EDITS: Call(
        "edit",
        lambda model, side: {
            "data": {"model": model, "prompt": EDIT_PROMPT, "size": f"{side}x{side}", "response_format": "b64_json"},
            "files": _image(),
        },
        streams=True,
        form=True,
    ),
    nebul.VARIATIONS: Call(
        "variation",
        lambda model, side: {
            "data": {"model": model, "size": f"{side}x{side}", "response_format": "b64_json"},
            "files": _image(),
        },
        form=True,
    ),
    pomelo.MIDJOURNEY: Call(
        "generate",
        lambda model, side: {
            "json": {"prompt": PROMPT, "model": model, "width": side, "height": side, "num_outputs": 1}
        },
    ),
    # The endpoint is the model (``flux.1``): no model field, and the size is an aspect ratio on a 1024 long side;
    # a side under 512 asks for the flattest one, 1024x64 (quick on a CPU).
    pomelo.FLUX: Call(
        "generate",
        lambda model, side: {"json": {"prompt": PROMPT, "aspect_ratio": flux_ratio(side), "steps": 2}},
        size=lambda side: pomelo.size_for_aspect_ratio(flux_ratio(side)),
    ),
    nebulablock.SERVERLESS: Call(
        "generate",
        lambda model, side: {
            "json": {
                "model": model,
                "prompt": PROMPT,
                "num_steps": 2,
                "guidance_scale": 4,
                "width": side,
                "height": side,
            }
        },
    ),
    nebulablock.V1: Call(
        "generate", lambda model, side: {"json": {"model": model, "prompt": PROMPT, "n": 1, "size": f"{side}x{side}"}}
    ),
    openai.GENERATIONS: Call(
        "generate",
        lambda model, side: {"json": {"model": model, "prompt": PROMPT, "size": f"{side}x{side}"}},
        streams=True,
    ),
    openai.EDITS: Call(
        "edit",
        lambda model, side: {
            "data": {"model": model, "prompt": EDIT_PROMPT, "size": f"{side}x{side}", "response_format": "b64_json"},
            "files": _image(),
        },
        streams=True,
        form=True,
    ),
    openai.VARIATIONS: Call(
        "variation",
        lambda model, side: {
            "data": {"model": model, "size": f"{side}x{side}", "response_format": "b64_json"},
            "files": _image(),
        },
        form=True,
    ),
}


def image_pointers(answer: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Each image of a dialect's answer as ("b64", data) or ("url", address), whichever it carries.

    Melious, Nebul and OpenAI answer ``data: [...]``, NebulaBlock's v1 ``data: {"images": [...]}``,
    Pomelo ``images: [...]``; NebulaBlock's serverless ``data: [...]`` with base64 only.
    """
    data = answer.get("data")
    items = data["images"] if isinstance(data, dict) else data if data is not None else answer["images"]
    return [("b64", item["b64_json"]) if item.get("b64_json") else ("url", item["url"]) for item in items]


def png_of(pointer: tuple[str, str], fetch: Callable[[str], bytes]) -> bytes:
    """The bytes an image pointer stands for (``fetch`` reads a URL)."""
    form, value = pointer
    return base64.b64decode(value) if form == "b64" else fetch(value)


# A client per dialect route, by name, as the tests of one behaviour across the dialects use it (idempotency,
# budgets): what it sends for model ``model`` (a 1024x1024 image, where it can say so), and how it finds
# the image in the answer: ("b64", pointer) or ("url", pointer).
Pointer = Callable[[dict[str, Any]], str]


def first_data(body: dict[str, Any], key: str) -> str:
    return str(body["data"][0][key])


INBOUND: dict[str, tuple[str, Callable[[str], dict[str, Any]], str, Pointer]] = {
    "melious": (
        "/melious/v1/images/generations",
        lambda m: {"model": m, "prompt": PROMPT, "size": "1024x1024", "n": 1},
        "url",
        lambda b: first_data(b, "url"),
    ),
    "melious-b64": (
        "/melious/v1/images/generations",
        lambda m: {"model": m, "prompt": PROMPT, "size": "1024x1024", "response_format": "b64_json"},
        "b64",
        lambda b: first_data(b, "b64_json"),
    ),
    "nebul": (
        "/nebul/v1/images/generations",
        lambda m: {"model": m, "prompt": PROMPT, "size": "1024x1024", "n": 1},
        "b64",
        lambda b: first_data(b, "b64_json"),
    ),
    "pomelo-midjourney": (
        "/pomelo/api/v1/midjourney/generate",
        lambda m: {"prompt": PROMPT, "model": m, "width": 1024, "height": 1024, "num_outputs": 1},
        "url",
        lambda b: str(b["images"][0]["url"]),
    ),
    "nebulablock-serverless": (
        "/nebulablock/api/v1/images/generation",
        lambda m: {"model": m, "prompt": PROMPT, "num_steps": 25, "guidance_scale": 9, "width": 1024, "height": 1024},
        "b64",
        lambda b: first_data(b, "b64_json"),
    ),
    "nebulablock-v1": (
        "/nebulablock/v1/images/generate",
        lambda m: {"model": m, "prompt": PROMPT, "n": 1, "size": "1024x1024"},
        "url",
        lambda b: str(b["data"]["images"][0]["url"]),
    ),
    "openai-root": (
        "/v1/images/generations",
        lambda m: {"model": m, "prompt": PROMPT, "size": "1024x1024"},
        "url",
        lambda b: first_data(b, "url"),
    ),
}
