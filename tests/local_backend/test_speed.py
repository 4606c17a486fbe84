"""Speed options of a local model: checked at config and model load, exact by default, close when they skip work.

Work skipped is counted through a hook inside the denoiser's last block (never timed); images are
compared pixel by pixel (PSNR, or the largest difference of a channel out of 255).
"""

from __future__ import annotations

import io
import math
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from PIL import Image

from gateway.config import ConfigError, parse_config
from local_backend.pipelines import LoadedModel, SpeedOptions, denoiser, load_model, prepare_model, quantize_float8
from local_backend.rules import Work, resolve
from local_backend.tiny import ensure_tiny
from schemas.canonical import ErrorCode, GatewayError, ImageRequest, Operation
from schemas.local import STEP_CACHE_KINDS, LocalModelSettings
from tests.local_backend.engines import local_settings, running_engine

# A step cache at this threshold skips the tail blocks at some steps of the tiny Flux model (8 steps, 64x64).
WORKING_THRESHOLD = 0.3
# ... and the image it draws stays this close to the full one (measured: 56 dB, 5 of 8 tail evaluations).
MIN_PSNR_DB = 40.0
# The tiny Flux model with its linear weights in float8 (weight-only) draws this close to float32 (measured: 38.6 dB,
# the largest channel difference 33 of 255).
FLOAT8_MIN_PSNR_DB = 30.0
STEPS = 8
# Each step-cache kind: a setting that never skips (the same image as no cache), and a working one, with the
# evaluations of the last block's attention it runs over the 8 steps of a 64x64 image (None: the cache decides
# from the image itself, so only "fewer than 8" is asserted: it runs 5). Every working one stays above MIN_PSNR_DB
# (measured on this CPU, in dB: first_block 56, taylor_seer 60, taylor_seer lite 46, mag 50, pyramid 60, faster 63;
# an edit, 7 steps: 5, 4, 4, 4, 4, 5 evaluations at 59, 61, 46, 52, 60, 60 dB).
CACHES: dict[str, tuple[dict[str, Any], dict[str, Any], int | None]] = {
    "first_block": ({"threshold": 0}, {"threshold": WORKING_THRESHOLD}, None),
    "taylor_seer": ({"interval": 1}, {"interval": 2, "warmup": 2}, 5),
    "taylor_seer lite": ({"interval": 1, "lite": True}, {"interval": 2, "warmup": 2, "lite": True}, 5),
    "mag": ({"mag_ratios": "flux1", "max_skip": 0}, {"mag_ratios": "flux1"}, 4),
    "pyramid_attention": ({"skip": 1}, {"skip": 2, "timesteps": [0, 1000]}, 4),
    "faster": ({"skip": 1}, {"skip": 2}, 6),
}


def cache(name: str, setting: dict[str, Any]) -> dict[str, Any]:
    return {"kind": name.split()[0], **setting}


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
    """Counts the evaluations of the denoiser's last block: a step cache that skips it skips its inner layers.

    On Flux, the query projection of the last block's attention: skipped by the caches that skip whole blocks
    (first_block, mag, taylor_seer lite) and by those that reuse or predict attention outputs alike.
    """

    def __init__(self, model: LoadedModel) -> None:
        self.count = 0
        net = denoiser(model.text_to_image)
        inner = net.single_transformer_blocks[-1].attn.to_q if hasattr(net, "single_transformer_blocks") else None
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


def edit(model: LoadedModel) -> tuple[Image.Image, int]:
    """An edit of a plain red image (strength 0.8: 7 of the 8 steps run), and the tail evaluations it ran."""
    counter = TailCounter(model)
    source = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(source, "PNG")
    image = model.draw([work(operation=Operation.EDIT, image=source.getvalue())], max_images=1).images[0][0]
    return image, counter.count


@pytest.fixture(scope="module")
def full_flux() -> tuple[Image.Image, int]:
    return draw("builtin:tiny-flux")


@pytest.fixture(scope="module")
def full_edit() -> tuple[Image.Image, int]:
    return edit(load_model("m", model_settings("builtin:tiny-flux"), "cpu", torch.float32))


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
    assert settings.quantize is None
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
        parse_config(config_text(path, "cache: {kind: first_block, threshold: 0.1}"), "gpu.yaml")
    assert "`cache`" in str(caught.value) and "$.providers.gpu.models.m" in str(caught.value)
    parse_config(config_text("builtin:tiny-flux", "cache: {kind: first_block, threshold: 0.1}"), "gpu.yaml")


def test_a_step_cache_on_a_unet_model_directory_is_refused_from_its_model_index(tmp_path: Path) -> None:
    directory = tmp_path / "sd"
    shutil.copytree(ensure_tiny("tiny-sd"), directory)
    with pytest.raises(ConfigError, match=r"`cache`.*SD model"):
        parse_config(config_text(str(directory), "cache: {kind: first_block}"), "gpu.yaml")


def test_a_step_cache_with_regional_compilation_is_refused_at_config_load_pointing_to_whole() -> None:
    option = "cache: {kind: first_block, threshold: 0.1}, compile: {mode: default}"
    with pytest.raises(ConfigError) as caught:
        parse_config(config_text("builtin:tiny-flux", option), "gpu.yaml")
    assert "`compile`: regional compilation (`scope: blocks`) does not combine with `cache`" in str(caught.value)
    assert "set `compile: {scope: whole}`" in str(caught.value)
    with pytest.raises(ConfigError, match=r"`compile.fullgraph`: a step cache's hooks are outside the graph"):
        parse_config(config_text("builtin:tiny-flux", option.replace("default", "default, scope: whole, "
                                                                        "fullgraph: true")), "gpu.yaml")  # fmt: skip
    config = parse_config(config_text("builtin:tiny-flux", option.replace("default", "default, scope: whole")), "x")
    settings = config.providers["gpu"].models["m"]  # type: ignore[union-attr]
    assert settings.compile.scope == "whole" and settings.cache.label() == "first_block:0.1"


@pytest.mark.parametrize("kind", STEP_CACHE_KINDS)
def test_each_cache_kind_reads_from_the_config_with_documented_defaults(kind: str) -> None:
    option = "cache: {kind: mag, mag_ratios: flux1}" if kind == "mag" else f"cache: {{kind: {kind}}}"
    config = parse_config(config_text("builtin:tiny-flux", option), "x")
    setting = config.providers["gpu"].models["m"].cache  # type: ignore[union-attr]
    assert setting is not None and setting.kind == kind and not setting.exact
    assert (
        setting.label()
        == {
            "first_block": "first_block:0.05",
            "taylor_seer": "taylor_seer:interval=5,order=1,warmup=3,lite=False",
            "mag": "mag:threshold=0.06,max_skip=3,retention=0.2,mag_ratios=flux1",
            "pyramid_attention": "pyramid_attention:skip=2,timesteps=100..800",
            "faster": "faster:skip=2,timesteps=-1..681,weight=0.5",
        }[kind]
    )


@pytest.mark.parametrize(
    ("option", "field"),
    [
        ("cache: {kind: first_block, threshold: -0.1}", "cache.threshold"),
        ("cache: {kind: sea}", "cache.kind"),
        ("cache: {threshold: 0.1}", "cache.kind"),  # no kind
        ("cache: {kind: mag}", "cache"),  # no mag_ratios
        ("cache: {kind: mag, mag_ratios: [1.0]}", "cache.mag_ratios"),
        ("cache: {kind: taylor_seer, interval: 0}", "cache.interval"),
        ("cache: {kind: taylor_seer, threshold: 0.1}", "cache"),  # another kind's field
        ("cache: {kind: pyramid_attention, timesteps: [800, 100]}", "cache"),
        ("cache: {kind: faster, skip: 0}", "cache.skip"),
        ("compile: {mode: fast}", "compile.mode"),
        ("compile: {scope: all}", "compile.scope"),
        ("batch_pixels: 0", "batch_pixels"),
        ("dtype: float8", "dtype"),
        ("fuse_qkv: maybe", "fuse_qkv"),
        ("quantize: fp4", "quantize"),
    ],
)
def test_bad_option_values_name_their_field(option: str, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(config_text("builtin:tiny-flux", option), "gpu.yaml")
    assert f"$.providers.gpu.models.m.{field}`" in str(caught.value)


def test_what_config_load_cannot_know_is_refused_at_model_load_naming_the_field(tmp_path: Path) -> None:
    directory = tmp_path / "later"  # not there when the config is read: fetched before the model loads
    settings = model_settings(str(directory), cache={"kind": "first_block", "threshold": 0.1})
    shutil.copytree(ensure_tiny("tiny-sd"), directory)
    with pytest.raises(GatewayError) as caught:
        load_model("m", settings, "cpu", torch.float32, where="$.providers.gpu.models.m")
    assert caught.value.message.startswith("`$.providers.gpu.models.m.cache`: UNet2DConditionModel has no step cache")


# --- step cache (Flux) ---


@pytest.mark.parametrize("name", list(CACHES))
def test_each_cache_kinds_exact_setting_draws_the_full_image(name: str, full_flux: tuple[Image.Image, int]) -> None:
    model = load_model(
        "m", model_settings("builtin:tiny-flux", cache=cache(name, CACHES[name][0])), "cpu", torch.float32
    )
    assert model.options.cache is not None and model.options.cache.startswith(name.split()[0] + ":")
    assert not model.rules.batch_alone  # nothing skipped: an image does not depend on its companions
    counter = TailCounter(model)
    image = model.draw([work()], max_images=1).images[0][0]
    assert counter.count == full_flux[1] == STEPS
    assert image.tobytes() == full_flux[0].tobytes()


@pytest.mark.parametrize("name", list(CACHES))
def test_each_cache_kind_at_a_working_setting_skips_work_and_stays_close(
    name: str, full_flux: tuple[Image.Image, int], full_edit: tuple[Image.Image, int]
) -> None:
    setting, expected = CACHES[name][1], CACHES[name][2]
    model = load_model("m", model_settings("builtin:tiny-flux", cache=cache(name, setting)), "cpu", torch.float32)
    assert model.rules.batch_alone
    model.warm_up()  # a call of one step before: the cache starts afresh at each call
    counter = TailCounter(model)
    image = model.draw([work()], max_images=1).images[0][0]
    assert counter.count < STEPS if expected is None else counter.count == expected
    assert image.tobytes() != full_flux[0].tobytes()
    assert psnr(image, full_flux[0]) >= MIN_PSNR_DB
    # An edit runs under the cache too (Flux's image-to-image pipeline sets no cache context of its own).
    edited, evaluations = edit(model)
    assert evaluations < full_edit[1] == 7
    assert psnr(edited, full_edit[0]) >= MIN_PSNR_DB


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
    settings.models["flux"] = model_settings(
        "builtin:tiny-flux", cache={"kind": "first_block", "threshold": 0.2}, fuse_qkv=True
    )
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


async def test_a_cached_model_serves_generations_and_edits_through_the_engine_with_its_cache_on_each_result() -> None:
    settings = local_settings({"flux": "builtin:tiny-flux"})
    settings.models["flux"] = model_settings("builtin:tiny-flux", cache={"kind": "pyramid_attention"})
    label = "float32 pyramid_attention:skip=2,timesteps=100..800"
    source = io.BytesIO()
    Image.new("RGB", (64, 64), "orange").save(source, "PNG")
    async with running_engine(settings) as engine:
        assert engine.stats().options["flux"].cache == "pyramid_attention:skip=2,timesteps=100..800"
        generated = await engine.generate(ImageRequest(model="flux", prompt="x", seed=1, n=2))
        edited = await engine.generate(
            ImageRequest(model="flux", prompt="x", seed=1, operation=Operation.EDIT, images=(source.getvalue(),))
        )
        assert (generated.speed_options, edited.speed_options) == (label, label)
        assert len(generated.images) == 2 and len(edited.images) == 1


async def test_an_option_the_model_does_not_support_keeps_it_from_loading_naming_the_field(tmp_path: Path) -> None:
    directory = tmp_path / "later"
    settings = local_settings({"ok": "builtin:tiny-sd"})
    settings.models["bad"] = model_settings(str(directory), cache={"kind": "first_block", "threshold": 0.1})
    shutil.copytree(ensure_tiny("tiny-sd"), directory)
    async with running_engine(settings) as engine:
        assert engine.stats().models["bad"].startswith("`$.providers.local.models.bad.cache`:")
        assert engine.stats().models["ok"] == "ready"
        with pytest.raises(GatewayError) as caught:
            await engine.generate(ImageRequest(model="bad", prompt="x"))
        assert caught.value.code is ErrorCode.OVERLOADED


def test_a_cached_model_draws_each_image_in_a_call_of_its_own() -> None:
    settings = model_settings("builtin:tiny-flux", cache={"kind": "first_block", "threshold": 0.2})
    model = load_model("m", settings, "cpu", torch.float32)
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


# --- a step cache with the whole denoiser compiled: the same image as the cache alone ---


def test_a_step_cache_with_the_whole_denoiser_compiled_draws_what_the_cache_alone_draws(
    full_flux: tuple[Image.Image, int],
) -> None:
    """Compiled with torch.compile's ``eager`` backend (traced by dynamo, no code generated: seconds on a CPU)."""
    from torch._dynamo.utils import counters

    def prepared(**options: Any) -> LoadedModel:
        settings = model_settings("builtin:tiny-flux", cache=cache("first_block", {"threshold": 0.3}), **options)
        pipeline = DiffusionPipeline.from_pretrained(str(ensure_tiny("tiny-flux")), local_files_only=True)
        return prepare_model("m", settings, pipeline, "cpu", torch.float32, compile_backend="eager")

    alone = prepared()
    compiled = prepared(compile={"scope": "whole"})
    net = denoiser(compiled.text_to_image)
    assert compiled.options.label() == "float32 first_block:0.3 compile:whole:default"
    assert net._compiled_call_impl is not None  # the whole denoiser, not its blocks
    assert not any(module._compiled_call_impl for module in net.modules() if module is not net)
    before = counters["stats"]["unique_graphs"]
    compiled.warm_up()
    assert counters["stats"]["unique_graphs"] > before
    image = compiled.draw([work()], max_images=1).images[0][0]
    reference = alone.draw([work()], max_images=1).images[0][0]
    # (No count here: a hook inside compiled code is not called once per evaluation.) The cache skipped steps
    # (not the full image), the same ones as without compilation (the cache's image within float rounding).
    assert image.tobytes() != full_flux[0].tobytes() and reference.tobytes() != full_flux[0].tobytes()
    assert worst(image, reference) <= 2


# --- float8 weights (torchao): a CUDA device only; on the CPU only the conversion itself is checked ---

WHERE = "$.providers.gpu.models.m"


def test_float8_on_a_cpu_provider_is_refused_at_config_load_naming_the_field() -> None:
    text = config_text("builtin:tiny-flux", "quantize: fp8").replace("kind: local,", "kind: local, device: cpu,")
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "gpu.yaml")
    assert "`models.m.quantize`: fp8 needs a CUDA device" in str(caught.value)
    parse_config(config_text("builtin:tiny-flux", "quantize: fp8"), "gpu.yaml")  # `auto`: known at model load


@pytest.mark.parametrize("kind", ["fp8", "fp8_weight_only"])
def test_float8_on_the_cpu_is_refused_at_model_load_naming_the_field(kind: str) -> None:
    with pytest.raises(GatewayError) as caught:
        load_model("m", model_settings("builtin:tiny-flux", quantize=kind), "cpu", torch.float32, where=WHERE)
    assert caught.value.message.startswith(f"`{WHERE}.quantize`: {kind} needs a CUDA device")


async def test_a_float8_model_on_the_cpu_is_unavailable_while_the_others_serve() -> None:
    settings = local_settings({"ok": "builtin:tiny-sd"})
    settings.models["fp8"] = model_settings("builtin:tiny-sd", quantize="fp8")
    async with running_engine(settings) as engine:
        assert engine.stats().models["fp8"].startswith("`$.providers.local.models.fp8.quantize`: fp8 needs a CUDA")
        assert engine.stats().models["ok"] == "ready"


def test_float8_without_torchao_is_refused_saying_how_to_install_it() -> None:
    # A fresh interpreter whose path finder does not see torchao, as where it is not installed: `find_spec` finds
    # nothing (what diffusers asks at import) and importing it raises Python's own ModuleNotFoundError.
    script = textwrap.dedent(f"""
        import importlib.machinery, sys

        class WithoutTorchao(importlib.machinery.PathFinder):
            @classmethod
            def find_spec(cls, name, path=None, target=None):
                if name.partition(".")[0] == "torchao":
                    return None
                return super().find_spec(name, path, target)

        sys.meta_path[sys.meta_path.index(importlib.machinery.PathFinder)] = WithoutTorchao
        import torch
        from local_backend.pipelines import load_model
        from schemas.canonical import GatewayError
        from schemas.local import LocalModelSettings

        settings = LocalModelSettings(path="builtin:tiny-flux", quantize="fp8")
        try:
            load_model("m", settings, "cpu", torch.float32, where="{WHERE}")
        except GatewayError as exc:
            print(exc.message)
        assert "torchao" not in sys.modules
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    message = done.stdout.strip().splitlines()[-1]
    assert message.startswith(f"`{WHERE}.quantize`: fp8 needs torchao, which does not import (No module named")
    assert "pip install --no-deps 'torchao>=0.18,<0.19'" in message


def test_the_options_line_names_the_float8_kind() -> None:
    options = SpeedOptions(dtype="bfloat16", quantize="fp8", cache="first_block:0.05", compile="whole:default")
    assert options.label() == "bfloat16 fp8 first_block:0.05 compile:whole:default"
    assert msgspec.json.decode(msgspec.json.encode(SpeedOptions(dtype="bfloat16"))) == {"dtype": "bfloat16"}


def test_float8_weight_only_converts_every_linear_layer_of_the_tiny_flux_transformer_on_the_cpu(
    full_flux: tuple[Image.Image, int],
) -> None:
    # torchao's weight-only float8 runs on the CPU (its dynamic float8 asserts a GPU of capability 8.9 itself),
    # so the conversion the engine applies on a GPU is checked here, outside the engine's device check.
    from torchao.quantization import Float8Tensor

    model = load_model("m", model_settings("builtin:tiny-flux"), "cpu", torch.float32)
    net = denoiser(model.text_to_image)
    linears = [module for module in net.modules() if isinstance(module, torch.nn.Linear)]
    assert linears and not any(isinstance(layer.weight, Float8Tensor) for layer in linears)
    quantize_float8(net, "fp8_weight_only")
    assert all(isinstance(layer.weight, Float8Tensor) for layer in linears)
    assert {layer.weight.qdata.dtype for layer in linears} == {torch.float8_e4m3fn}
    image = model.draw([work()], max_images=1).images[0][0]
    assert image.tobytes() != full_flux[0].tobytes()  # float8 weights: no longer exact ...
    assert psnr(image, full_flux[0]) > FLOAT8_MIN_PSNR_DB  # ... but the same image
