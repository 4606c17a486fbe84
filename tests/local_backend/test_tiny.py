"""The tiny random-weight models: built from configs alone, saved, and loaded back like real weights."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from local_backend import tiny
from local_backend.pipelines import load_model
from local_backend.rules import Work
from schemas.canonical import Operation
from schemas.local import LocalModelSettings

FAMILIES = {"tiny-sd": ("StableDiffusionPipeline", 8), "tiny-sdxl": ("StableDiffusionXLPipeline", 8),
            "tiny-flux": ("FluxPipeline", 16)}  # fmt: skip


def work(model: str, **fields: object) -> Work:
    base: dict[str, object] = {"model": model, "operation": Operation.GENERATE, "prompt": "a red fox",
                               "negative_prompt": None, "n": 1, "width": 64, "height": 64, "steps": 2,
                               "guidance": 2.0, "seed": 3, "strength": 0.8}  # fmt: skip
    return Work(**{**base, **fields})  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", tiny.TINY_KINDS)
def test_each_tiny_model_loads_through_the_real_loader_and_draws_fast(kind: str) -> None:
    model = load_model(kind, LocalModelSettings(path=f"builtin:{kind}"), "cpu", torch.float32)
    pipeline_class, multiple = FAMILIES[kind]
    assert type(model.text_to_image).__name__ == pipeline_class
    assert model.rules.multiple == multiple and model.rules.default_size == 64 and model.rules.default_steps == 2
    index = json.loads((tiny.model_root() / kind / "model_index.json").read_text())
    assert index["_class_name"] == pipeline_class
    model.warm_up()
    drawn = model.draw([work(kind)], max_images=4)  # how fast: `make bench-local`, not a timed test
    assert drawn.images[0][0].size == (64, 64) and drawn.calls == [1]


@pytest.mark.parametrize("kind", tiny.TINY_KINDS)
def test_img2img_and_inpainting_share_the_weights(kind: str) -> None:
    model = load_model(kind, LocalModelSettings(path=f"builtin:{kind}"), "cpu", torch.float32)
    denoiser = "transformer" if kind == "tiny-flux" else "unet"
    assert model.image_to_image is not None and model.inpainting is not None
    assert getattr(model.image_to_image, denoiser) is getattr(model.text_to_image, denoiser)
    assert model.inpainting.vae is model.text_to_image.vae


def test_weights_come_from_a_fixed_seed() -> None:
    first = tiny.build_tiny_pipeline("tiny-sd").unet.conv_in.weight
    second = tiny.build_tiny_pipeline("tiny-sd").unet.conv_in.weight
    assert torch.equal(first, second)


def test_building_is_idempotent(tmp_path: Path) -> None:
    target = tiny.ensure_tiny("tiny-sd", tmp_path)
    stamp = (target / tiny.STAMP).stat().st_mtime_ns
    assert tiny.ensure_tiny("tiny-sd", tmp_path) == target
    assert (target / tiny.STAMP).stat().st_mtime_ns == stamp
    assert [path.name for path in tmp_path.iterdir()] == ["tiny-sd"]  # no staging left behind


def test_builders_racing_for_one_directory_leave_one_complete_copy(tmp_path: Path) -> None:
    results: list[Path] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            results.append(tiny.ensure_tiny("tiny-flux", tmp_path))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors and len(results) == 3 and len(set(results)) == 1
    assert (results[0] / tiny.STAMP).read_text() == tiny.BUILD_VERSION
    assert [path.name for path in tmp_path.iterdir()] == ["tiny-flux"]


def test_an_outdated_or_partial_build_is_replaced(tmp_path: Path) -> None:
    partial = tmp_path / "tiny-sd"
    partial.mkdir()
    (partial / "model_index.json").write_text("{}")  # an interrupted copy: no stamp
    target = tiny.ensure_tiny("tiny-sd", tmp_path)
    assert (target / tiny.STAMP).read_text() == tiny.BUILD_VERSION
    assert json.loads((target / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"


def test_the_model_dir_comes_from_the_environment(model_dir: Path) -> None:
    assert tiny.model_root() == model_dir


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="tiny-sd, tiny-sdxl, tiny-flux"):
        tiny.build_tiny_pipeline("tiny-dalle")


def test_check_config_knows_every_built_in_model() -> None:
    """gateway/config/weights.py lists them without importing torch: the same names."""
    from gateway.config.weights import BUILTIN_MODELS

    assert BUILTIN_MODELS == tiny.TINY_KINDS
