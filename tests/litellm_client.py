"""LiteLLM's Python SDK, unchanged, against the gateway's root /v1 family.

It runs in LiteLLM's own virtualenv (requirements/litellm.txt: its pins clash with ours), started by
tests/integration/test_third_party_clients.py. LiteLLM parses every answer into its own ``ImageResponse``
(``usage`` in OpenAI's shape), so an answer that strays from OpenAI's document fails here.

Usage: python tests/litellm_client.py <base_url ending in /v1> <input.png> <case> [<case> ...]
Prints one JSON line per case, in order: {"case": ..., "ok": true, "images": [...], "usage": {...}} or
{"case": ..., "ok": false, "error": "..."}. The cases share one process: importing LiteLLM takes seconds.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import urllib.request
from typing import Any

import litellm

PNG = b"\x89PNG"


def image_bytes(item: Any) -> bytes:
    if getattr(item, "b64_json", None):
        return base64.b64decode(item.b64_json)
    with urllib.request.urlopen(item.url, timeout=30) as answer:  # a gateway URL on loopback
        return answer.read()


def run(base_url: str, input_png: str, case: str) -> dict[str, Any]:
    common: dict[str, Any] = {"api_base": base_url, "api_key": "sk-anything", "num_retries": 0, "timeout": 60}
    if case == "generate-url":
        response = litellm.image_generation(
            model="openai/dall-e-3", prompt="a lighthouse", response_format="url", **common
        )
    elif case == "generate-b64":
        response = litellm.image_generation(
            model="openai/dall-e-3", prompt="a lighthouse", response_format="b64_json", **common
        )
    elif case == "generate-gpt-image":
        response = litellm.image_generation(model="openai/gpt-image-1", prompt="a lighthouse", size="64x64", **common)
    elif case == "edit":
        with open(input_png, "rb") as image:
            response = litellm.image_edit(
                model="openai/gpt-image-1", image=image, prompt="make it night", size="64x64", **common
            )
    elif case == "variation":
        with open(input_png, "rb") as image:
            response = litellm.image_variation(model="openai/dall-e-2", image=image, n=1, **common)
    else:
        raise ValueError(f"unknown case {case!r}")
    images = [image_bytes(item) for item in response.data]
    usage = getattr(response, "usage", None)
    return {
        "ok": True,
        "images": [
            {"png": data[:4] == PNG, "bytes": len(data), "sha": hashlib.sha256(data).hexdigest()} for data in images
        ],
        "usage": usage.model_dump() if hasattr(usage, "model_dump") else usage,
    }


def main() -> None:
    base_url, input_png, *cases = sys.argv[1:]
    for case in cases:
        try:
            answer = run(base_url, input_png, case)
        except Exception as exc:  # the test reads the failure from the line printed
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps({"case": case, **answer}), flush=True)


if __name__ == "__main__":
    main()
