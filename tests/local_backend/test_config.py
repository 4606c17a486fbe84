"""The ``kind: local`` provider's settings, and what importing them costs a gateway without torch."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import msgspec
import pytest

from gateway.config import ConfigError, parse_config
from schemas.local import LocalBackendSettings


def settings(**raw: Any) -> LocalBackendSettings:
    return msgspec.convert({"kind": "local", **raw}, LocalBackendSettings)


def test_defaults() -> None:
    local = settings(models={"tiny": {"path": "builtin:tiny-sd"}})
    assert (local.device, local.dtype, local.queue_size, local.max_batch_size) == ("auto", "bfloat16", 64, 4)
    model = local.models["tiny"]
    assert (model.max_steps, model.max_pixels, model.strength, model.default_size) == (50, 1024 * 1024, 0.8, None)
    assert model.max_input_pixels == 4096 * 4096


@pytest.mark.parametrize("value", [0, -1, 8192 * 8192 + 1, "many"])
def test_max_input_pixels_is_checked_at_load_naming_its_field(value: object) -> None:
    text = f"""
providers:
  gpu: {{kind: local, models: {{tiny: {{path: "builtin:tiny-sd", max_input_pixels: {value}}}}}}}
models: [{{name: tiny, targets: [{{provider: gpu, model: tiny}}]}}]
"""
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "gpu.yaml")
    assert "$.providers.gpu.models" in str(caught.value) and ".max_input_pixels`" in str(caught.value)
    ok = parse_config(text.replace(str(value), str(8192 * 8192)), "gpu.yaml")
    assert ok.providers["gpu"].models["tiny"].max_input_pixels == 8192 * 8192  # type: ignore[union-attr]


def test_a_local_provider_needs_models_or_workers() -> None:
    with pytest.raises(msgspec.ValidationError, match="needs `models`"):
        settings()


def test_workers_are_urls_without_trailing_slash() -> None:
    assert settings(workers=["http://gpu-1:8090/"]).workers == ["http://gpu-1:8090"]
    with pytest.raises(msgspec.ValidationError, match="http:// or https://"):
        settings(workers=["gpu-1:8090"])


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1"])
def test_devices(device: str) -> None:
    assert settings(models={"m": {"path": "x"}}, device=device).device == device


@pytest.mark.parametrize(
    ("field", "value"), [("device", "tpu"), ("dtype", "int8"), ("queue_size", 0), ("batch_window_ms", -1)]
)
def test_bad_values_are_refused(field: str, value: Any) -> None:
    with pytest.raises(msgspec.ValidationError):
        settings(models={"m": {"path": "x"}}, **{field: value})


def test_the_gateway_config_names_the_bad_field_of_a_local_provider() -> None:
    text = """
providers:
  gpu: {kind: local, models: {tiny: {path: "builtin:tiny-sd", strength: 2}}}
models: [{name: tiny, targets: [{provider: gpu, model: tiny}]}]
"""
    with pytest.raises(ConfigError, match=r"<= 1.0 - at `\$\.providers\.gpu\.models\.tiny\.strength`"):
        parse_config(text)


def test_a_gateway_config_with_a_local_provider_parses() -> None:
    text = """
providers:
  gpu:
    kind: local
    device: cpu
    max_batch_size: 8
    models: {tiny: {path: "builtin:tiny-sd", max_steps: 4}}
models: [{name: tiny, targets: [{provider: gpu, model: tiny}]}]
"""
    provider = parse_config(text).providers["gpu"]
    assert isinstance(provider, LocalBackendSettings)
    assert provider.max_batch_size == 8 and provider.models["tiny"].max_steps == 4


def test_config_and_adapter_import_neither_torch_nor_diffusers() -> None:
    """A gateway replica without the [local] extra reads local providers and reaches remote workers;
    importing the gateway imports nothing of local_backend and changes no environment variable."""
    code = (
        "import os, sys; before = dict(os.environ);"
        "import schemas.local, adapters.local, schemas.worker, gateway.app, gateway.cli;"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers', 'PIL', 'local_backend') if m in sys.modules);"
        "changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k));"
        "print(heavy, changed); sys.exit(1 if heavy or changed else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"imported at start: {done.stdout} {done.stderr}"
