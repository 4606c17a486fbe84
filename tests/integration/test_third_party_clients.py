"""Third-party clients that check answers strictly, unchanged, against the gateway's root /v1 family.

- the Vercel AI SDK (`ai` with `@ai-sdk/openai` and `@ai-sdk/openai-compatible`, tests/js/ai_sdk.mjs): it validates
  each answer with its own schema, so a `null` field or Nebul's `usage` fails as "Invalid JSON response";
- LiteLLM's Python SDK (tests/litellm_client.py), in its own virtualenv (requirements/litellm.txt).

Each runs in a process of its own, at the versions the lock files pin, over real loopback HTTP (LiteLLM's
cases all in one process: importing it takes seconds).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.emulators import EmulatorServer, solid_png
from tests.integration.conftest import provider_entries
from tests.integration.gateway_server import GatewayServer, gateway_config

ROOT = Path(__file__).resolve().parents[2]
JS_DIR = ROOT / "tests" / "js"
LITELLM_PYTHON = ROOT / "bench" / ".venv-litellm" / "bin" / "python"


class LocalGatewayServer(GatewayServer):
    startup_timeout_s = 60.0  # the local engine loads its models before the gateway listens


@pytest.fixture(scope="module")
def gateway(emulators: dict[str, EmulatorServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    """OpenAI's model names on our targets: dall-e-3 and dall-e-2 at emulators, gpt-image-1 and tiny locally."""
    tiny = {"tiny": {"path": "builtin:tiny-sd"}}
    local = {"kind": "local", "device": "cpu", "batch_window_ms": 0, "models": tiny}
    providers = provider_entries(emulators)
    providers["gpu"] = local
    models = [
        {"name": "dall-e-3", "targets": [{"provider": "melious", "model": "flux-schnell"}]},
        {"name": "dall-e-2", "targets": [{"provider": "nebul", "model": "black-forest-labs/FLUX.1-Kontext-dev"}]},
        {"name": "gpt-image-1", "targets": [{"provider": "gpu", "model": "tiny"}]},
        {"name": "tiny", "targets": [{"provider": "gpu", "model": "tiny"}]},
    ]
    server = LocalGatewayServer(gateway_config(providers, models, tmp_path_factory.mktemp("store"))).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def input_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("input") / "input.png"
    path.write_bytes(solid_png(64, 64, (40, 80, 120)))
    return path


def _run(command: list[str]) -> dict[str, Any]:
    ran = subprocess.run(command, capture_output=True, text=True, timeout=180, env={**os.environ, "NO_COLOR": "1"})
    assert ran.returncode == 0, ran.stderr[-3000:]
    lines = [line for line in ran.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no answer line from {command[1]}:\n{ran.stdout[-2000:]}\n{ran.stderr[-2000:]}"
    answer: dict[str, Any] = json.loads(lines[-1])
    assert answer["ok"], answer
    return answer


def ai_sdk(gateway: GatewayServer, case: str, *extra: str) -> dict[str, Any]:
    node = shutil.which("node")
    assert node, "node is needed for the Vercel AI SDK test (install Node.js 18 or later)"
    assert (JS_DIR / "node_modules" / "ai").is_dir(), "tests/js/node_modules is missing: run `make test` (npm ci)"
    return _run([node, str(JS_DIR / "ai_sdk.mjs"), gateway.url + "/v1", case, *extra])


LITELLM_CASES = ["generate-url", "generate-b64", "generate-gpt-image", "edit", "variation"]


@pytest.fixture(scope="module")
def litellm(gateway: GatewayServer, input_png: Path) -> dict[str, dict[str, Any]]:
    """Every LiteLLM case's answer (tests/litellm_client.py), one process for them all; a case that failed
    fails the test that reads it."""
    assert LITELLM_PYTHON.exists(), f"{LITELLM_PYTHON} is missing: `make test` builds LiteLLM's virtualenv"
    script = str(ROOT / "tests" / "litellm_client.py")
    command = [str(LITELLM_PYTHON), script, gateway.url + "/v1", str(input_png), *LITELLM_CASES]
    # LiteLLM's own price list, not a fetch of its newest at import (no downloads at run time).
    env = {**os.environ, "NO_COLOR": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    ran = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert ran.returncode == 0, ran.stderr[-3000:]
    lines = [json.loads(line) for line in ran.stdout.splitlines() if line.startswith('{"case": ')]
    assert lines, f"no answer line from {script}:\n{ran.stdout[-2000:]}\n{ran.stderr[-2000:]}"
    return {answer.pop("case"): answer for answer in lines}


def _case(answers: dict[str, dict[str, Any]], case: str) -> dict[str, Any]:
    answer = answers.get(case)
    assert answer is not None, f"LiteLLM's process ended before {case!r}; it answered {sorted(answers)}"
    assert answer["ok"], answer
    return answer


def _pngs(answer: dict[str, Any], count: int) -> list[str]:
    images = answer["images"]
    assert len(images) == count
    assert all(image["png"] and image["bytes"] > 0 for image in images)
    return [image["sha"] for image in images]


# --- the Vercel AI SDK ---


def test_ai_sdk_dall_e_3(gateway: GatewayServer) -> None:
    _pngs(ai_sdk(gateway, "dall-e-3"), 1)


def test_ai_sdk_gpt_image_1_n2_answers_base64_unasked(gateway: GatewayServer) -> None:
    """The SDK sends no response_format for a GPT image model: the gateway answers b64_json, as OpenAI does."""
    answer = ai_sdk(gateway, "gpt-image-1")
    first, second = _pngs(answer, 2)
    assert first != second
    assert answer["usage"]["inputTokens"] == 0 and answer["usage"]["outputTokens"] == 0  # no upstream counts tokens
    (image, _) = answer["metadata"]["openai"]["images"]
    assert image["outputFormat"] == "png"
    assert "size" not in image  # 64x64 is none of the sizes OpenAI's document lists: left out, never "auto"


def test_ai_sdk_gpt_image_1_edit(gateway: GatewayServer, input_png: Path) -> None:
    _pngs(ai_sdk(gateway, "gpt-image-1-edit", str(input_png)), 1)


def test_ai_sdk_openai_compatible_model_of_ours_with_seed(gateway: GatewayServer, input_png: Path) -> None:
    """A seed given as the compatible provider's option reaches the engine: two runs draw the same image."""
    (first,) = _pngs(ai_sdk(gateway, "tiny"), 1)
    (again,) = _pngs(ai_sdk(gateway, "tiny"), 1)
    assert first == again
    _pngs(ai_sdk(gateway, "tiny-edit", str(input_png)), 1)


# --- LiteLLM's SDK ---


def test_litellm_generate_url_and_b64(litellm: dict[str, dict[str, Any]]) -> None:
    _pngs(_case(litellm, "generate-url"), 1)
    _pngs(_case(litellm, "generate-b64"), 1)


def test_litellm_gpt_image_answers_base64_with_openai_usage(litellm: dict[str, dict[str, Any]]) -> None:
    answer = _case(litellm, "generate-gpt-image")
    _pngs(answer, 1)
    assert answer["usage"]["input_tokens"] == 0 and answer["usage"]["total_tokens"] == 0


def test_litellm_edit_and_variation(litellm: dict[str, dict[str, Any]]) -> None:
    _pngs(_case(litellm, "edit"), 1)
    _pngs(_case(litellm, "variation"), 1)
