"""Loading from disk (and the clear errors when a model is not there), devices, and drawing batches."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from local_backend.pipelines import LoadedModel, load_model, pick_device, pick_dtype
from local_backend.rules import Work
from schemas.canonical import ErrorCode, GatewayError, Operation
from schemas.local import LocalModelSettings


def missing(path: str) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        load_model("mine", LocalModelSettings(path=path), "cpu", torch.float32)
    assert caught.value.code is ErrorCode.MODEL_NOT_FOUND
    assert "'mine'" in caught.value.message
    return caught.value


def test_a_missing_directory_is_model_not_found_naming_the_path(tmp_path: Path) -> None:
    error = missing(str(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in error.message
    assert "save_pretrained" in error.message and "hf download" in error.message


def test_a_directory_without_a_model_says_so(tmp_path: Path) -> None:
    error = missing(str(tmp_path))
    assert str(tmp_path) in error.message and "model_index.json" in error.message


def test_a_hub_id_not_in_the_cache_is_model_not_found_naming_the_id(tmp_path: Path) -> None:
    assert os.environ["HF_HUB_OFFLINE"] == "1", "importing local_backend switches the hub offline"
    error = missing("someone/not-cached-model")
    assert "'someone/not-cached-model'" in error.message and "Hugging Face cache" in error.message
    assert "never downloaded" in error.message


def test_an_unknown_builtin_lists_the_known_ones() -> None:
    error = missing("builtin:tiny-dalle")
    assert "builtin:tiny-sd" in error.message and "builtin:tiny-flux" in error.message


def test_devices_and_dtypes() -> None:
    assert pick_device("cpu") == "cpu"
    assert pick_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_dtype("cpu", "bfloat16") is torch.float32
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            pick_device("cuda:0")


def work(**fields: object) -> Work:
    base: dict[str, object] = {"model": "tiny", "operation": Operation.GENERATE, "prompt": "a red fox",
                               "negative_prompt": None, "n": 1, "width": 64, "height": 64, "steps": 2,
                               "guidance": 2.0, "seed": 3, "strength": 0.8}  # fmt: skip
    return Work(**{**base, **fields})  # type: ignore[arg-type]


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def sd() -> LoadedModel:
    return load_model("tiny", LocalModelSettings(path="builtin:tiny-sd"), "cpu", torch.float32)


def test_a_batch_is_cut_into_calls_of_at_most_max_images(sd: LoadedModel) -> None:
    drawn = sd.draw([work(n=3), work(prompt="b", negative_prompt="blur", n=2, seed=9)], max_images=4)
    assert drawn.calls == [4, 1]
    assert [len(images) for images in drawn.images] == [3, 2]


def test_each_image_is_fixed_by_its_own_seed(sd: LoadedModel) -> None:
    alone = sd.draw([work(seed=11)], max_images=4).images[0][0]
    again = sd.draw([work(seed=11)], max_images=4).images[0][0]
    other = sd.draw([work(seed=12)], max_images=4).images[0][0]
    assert png(alone) == png(again) and png(alone) != png(other)
    # In a batch the same seed gives the same image up to float rounding of the batched kernels.
    batched = sd.draw([work(seed=5, n=1), work(seed=11, prompt="a red fox")], max_images=4).images[1][0]
    worst = max(abs(a - b) for a, b in zip(alone.tobytes(), batched.tobytes(), strict=True))
    assert worst <= 2


def test_edit_variation_and_inpainting_draw_at_the_asked_size(sd: LoadedModel) -> None:
    source = png(Image.new("RGB", (80, 48), "green"))
    mask = png(Image.new("L", (80, 48), 255))
    edit = sd.draw([work(operation=Operation.EDIT, image=source, width=96, height=64, n=2)], 4)
    inpaint = sd.draw([work(operation=Operation.EDIT, image=source, mask=mask)], 4)
    variation = sd.draw([work(operation=Operation.VARIATION, prompt="", image=source, steps=1)], 4)
    assert [image.size for image in edit.images[0]] == [(96, 64), (96, 64)] and edit.calls == [2]
    assert inpaint.images[0][0].size == (64, 64)
    assert variation.images[0][0].size == (64, 64)
