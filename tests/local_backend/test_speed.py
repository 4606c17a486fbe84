"""Speed options of a local model: checked at config and model load, exact by default, close when they skip work.

Work skipped is counted through a hook on the denoiser's last block (never timed); images are
compared pixel by pixel (PSNR, or the largest difference of a channel out of 255).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import torch
from PIL import Image

from gateway.config import ConfigError, parse_config
from local_backend.pipelines import LoadedModel, SpeedOptions, denoiser, load_model
from local_backend.rules import Work, resolve
from local_backend.tiny import ensure_tiny
from schemas.canonical import ErrorCode, GatewayError, ImageRequest, Operation
from schemas.local import LocalModelSettings
from tests.local_backend.engines import local_settings, running_engine

# A step cache at this threshold skips the tail blocks at some steps of the tiny Flux model (8 steps, 64x64).
WORKING_THRESHOLD = 0.3
# ... and the image it draws stays this close to the full one (measured: 56 dB, 5 of 8 tail evaluations).
MIN_PSNR_DB = 40.0
STEPS = 8


def model_settings(path: str, **options: Any) -> LocalModelSettings:
    return msgspec.convert({"path": path, **options}, LocalModelSettings)


def work(**fields: object) -> Work:
    base: dict[str, object] = {"model": "m", "operation": Operation.GENERATE, "prompt": "a red fox",
                               "negative_prompt": None, "n": 1, "width": 64, "height": 64, "steps": STEPS,
                               "guidance": 2.0, "seed": 7, "strength": 0.8}  # fmt: skip
    return Work(**{**base, **fields})  # type: ignore[arg-type]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def psnr(a: Image.Image, b: Image.Image) -> float:
    mse = float(((pixels(a) - pixels(b)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def worst(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(pixels(a) - pixels(b)).max())


class TailCounter:
    """Counts the evaluations of the denoiser's last block: a step cache that skips it skips its inner layers."""

    def __init__(self, model: LoadedModel) -> None:
        self.count = 0
        net = denoiser(model.text_to_image)
        inner = net.single_transformer_blocks[-1].proj_out if hasattr(net, "single_transformer_blocks") else None
        if inner is None:  # a UNet: the last up block's last resnet
            inner = net.up_blocks[-1].resnets[-1].conv2
        inner.register_forward_pre_hook(self._seen)

    def _seen(self, *_: Any) -> None:
        self.count += 1


def draw(path: str, **options: Any) -> tuple[Image.Image, int]:
    model = load_model("m", model_settings(path, **options), "cpu", torch.float32)
    counter = TailCounter(model)
    image = model.draw([work()], max_images=1).images[0][0]
    return image, counter.count


@pytest.fixture(scope="module")
def full_flux() -> tuple[Image.Image, int]:
    return draw("builtin:tiny-flux")


# --- config ---


def test_defaults_are_exact() -> None:
    settings = model_settings("builtin:tiny-flux")
    assert (settings.cache, settings.compile, settings.fuse_qkv, settings.channels_last, settings.dtype) == (
        None,
        None,
        False,
        False,
        None,
    )
    assert settings.batch_pixels == 2 * 1024 * 1024


def config_text(path: str, option: str) -> str:
    return f"""
providers:
  gpu: {{kind: local, models: {{m: {{path: "{path}", {option}}}}}}}
models: [{{name: m, targets: [{{provider: gpu, model: m}}]}}]
"""


@pytest.mark.parametrize("path", ["builtin:tiny-sd", "builtin:tiny-sdxl"])
def test_a_step_cache_on_a_unet_model_is_refused_at_config_load_naming_the_field(path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(config_text(path, "cache: {threshold: 0.1}"), "gpu.yaml")
    assert "`cache`" in str(caught.value) and "$.providers.gpu.models.m" in str(caught.value)
    parse_config(config_text("builtin:tiny-flux", "cache: {threshold: 0.1}"), "gpu.yaml")


def test_a_step_cache_on_a_unet_model_directory_is_refused_from_its_model_index(tmp_path: Path) -> None:
    directory = tmp_path / "sd"
    shutil.copytree(ensure_tiny("tiny-sd"), directory)
    with pytest.raises(ConfigError, match=r"`cache`.*SD model"):
        parse_config(config_text(str(directory), "cache: {kind: first_block}"), "gpu.yaml")


def test_a_step_cache_and_compile_together_are_refused_at_config_load() -> None:
    option = "cache: {threshold: 0.1}, compile: {mode: default}"
    with pytest.raises(ConfigError, match=r"`compile`: regional compilation does not combine with `cache`"):
        parse_config(config_text("builtin:tiny-flux", option), "gpu.yaml")


@pytest.mark.parametrize(
    ("option", "field"),
    [
        ("cache: {threshold: -0.1}", "cache.threshold"),
        ("cache: {kind: faster}", "cache.kind"),
        ("compile: {mode: fast}", "compile.mode"),
        ("batch_pixels: 0", "batch_pixels"),
        ("dtype: float8", "dtype"),
        ("fuse_qkv: maybe", "fuse_qkv"),
    ],
)
def test_bad_option_values_name_their_field(option: str, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(config_text("builtin:tiny-flux", option), "gpu.yaml")
    assert f"$.providers.gpu.models.m.{field}`" in str(caught.value)


def test_what_config_load_cannot_know_is_refused_at_model_load_naming_the_field(tmp_path: Path) -> None:
    directory = tmp_path / "later"  # not there when the config is read: fetched before the model loads
    settings = model_settings(str(directory), cache={"threshold": 0.1})
    shutil.copytree(ensure_tiny("tiny-sd"), directory)
    with pytest.raises(GatewayError) as caught:
        load_model("m", settings, "cpu", torch.float32, where="$.providers.gpu.models.m")
    assert caught.value.message.startswith("`$.providers.gpu.models.m.cache`: UNet2DConditionModel has no step cache")


# --- step cache (Flux) ---


def test_a_step_cache_at_threshold_zero_draws_the_full_image(full_flux: tuple[Image.Image, int]) -> None:
    image, evaluations = draw("builtin:tiny-flux", cache={"threshold": 0})
    assert evaluations == full_flux[1] == STEPS
    assert image.tobytes() == full_flux[0].tobytes()


def test_a_step_cache_at_a_working_threshold_skips_steps_and_stays_close(full_flux: tuple[Image.Image, int]) -> None:
    image, evaluations = draw("builtin:tiny-flux", cache={"threshold": WORKING_THRESHOLD})
    assert evaluations < STEPS
    assert image.tobytes() != full_flux[0].tobytes()
    assert psnr(image, full_flux[0]) >= MIN_PSNR_DB


# --- fused QKV and channels-last: the same image within float rounding ---


@pytest.mark.parametrize("kind", ["tiny-sd", "tiny-sdxl", "tiny-flux"])
@pytest.mark.parametrize("option", ["fuse_qkv", "channels_last"])
def test_fused_qkv_and_channels_last_draw_the_same_image(kind: str, option: str) -> None:
    full, _ = draw(f"builtin:{kind}")
    image, _ = draw(f"builtin:{kind}", **{option: True})
    assert worst(image, full) <= 2


# --- through the engine: options in the stats and on each result; a cached model never batches ---


async def test_the_engine_reports_each_models_options_and_records_them_on_each_result() -> None:
    settings = local_settings({"sd": "builtin:tiny-sd", "flux": "builtin:tiny-flux"})
    settings.models["flux"] = model_settings("builtin:tiny-flux", cache={"threshold": 0.2}, fuse_qkv=True)
    async with running_engine(settings) as engine:
        stats = engine.stats()
        assert stats.options == {
            "flux": SpeedOptions(dtype="float32", cache="first_block:0.2", fuse_qkv=True),
            "sd": SpeedOptions(dtype="float32"),
        }
        assert msgspec.json.decode(msgspec.json.encode(stats))["options"]["sd"] == {"dtype": "float32"}
        flux = await engine.generate(ImageRequest(model="flux", prompt="x", seed=1))
        sd = await engine.generate(ImageRequest(model="sd", prompt="x", seed=1))
        assert (flux.speed_options, sd.speed_options) == ("float32 first_block:0.2 fuse_qkv", "float32")


async def test_an_option_the_model_does_not_support_keeps_it_from_loading_naming_the_field(tmp_path: Path) -> None:
    directory = tmp_path / "later"
    settings = local_settings({"ok": "builtin:tiny-sd"})
    settings.models["bad"] = model_settings(str(directory), cache={"threshold": 0.1})
    shutil.copytree(ensure_tiny("tiny-sd"), directory)
    async with running_engine(settings) as engine:
        assert engine.stats().models["bad"].startswith("`$.providers.local.models.bad.cache`:")
        assert engine.stats().models["ok"] == "ready"
        with pytest.raises(GatewayError) as caught:
            await engine.generate(ImageRequest(model="bad", prompt="x"))
        assert caught.value.code is ErrorCode.OVERLOADED


def test_a_cached_model_draws_each_image_in_a_call_of_its_own() -> None:
    model = load_model("m", model_settings("builtin:tiny-flux", cache={"threshold": 0.2}), "cpu", torch.float32)
    assert model.rules.batch_alone
    resolved = resolve(ImageRequest(model="m", prompt="x", n=3, steps=2), model.rules)
    assert resolved.batch_key is None and resolved.images_per_call(4) == 1
    assert model.draw([resolved], resolved.images_per_call(4)).calls == [1, 1, 1]


# --- regional compilation: compiled at load, warmed up before serving, the same image within float rounding ---


@pytest.mark.parametrize("kind", ["tiny-sd", "tiny-flux"])
def test_compiled_blocks_are_compiled_by_the_warm_up_and_draw_the_same_image(kind: str) -> None:
    from torch._dynamo.utils import counters

    eager = load_model("m", model_settings(f"builtin:{kind}"), "cpu", torch.float32)
    compiled = load_model("m", model_settings(f"builtin:{kind}", compile={}), "cpu", torch.float32)
    assert compiled.options.compile == "default"
    blocks = [module for module in denoiser(compiled.text_to_image).modules() if module._compiled_call_impl]
    assert blocks and all(type(block).__name__ in denoiser(compiled.text_to_image)._repeated_blocks for block in blocks)
    before = counters["stats"]["unique_graphs"]
    compiled.warm_up()  # what the engine does before it reports ready
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > before
    at_default = work(steps=2, width=compiled.rules.default_size, height=compiled.rules.default_size)
    image = compiled.draw([at_default], max_images=1).images[0][0]
    assert counters["stats"]["unique_graphs"] == graphs  # nothing compiled while serving the warmed-up size
    assert worst(image, eager.draw([at_default], max_images=1).images[0][0]) <= 2
