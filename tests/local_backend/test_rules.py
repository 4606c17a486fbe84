"""Requests checked against a model's rules before they queue, and every default filled in."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from local_backend.rules import ModelRules, declared_size, fit_size, resolve, webp_dimensions
from schemas.canonical import ErrorCode, GatewayError, ImageRequest, Operation
from tests.local_backend.bad_images import bomb_png, huge_valid_png, png_header, truncated_png, webp_bomb, zero_png

SD = ModelRules(
    name="sd",
    family="sd",
    multiple=8,
    max_pixels=512 * 512,
    max_steps=40,
    default_size=256,
    default_steps=20,
    default_guidance=7.5,
    strength=0.8,
)
FLUX = ModelRules(
    name="flux",
    family="flux",
    multiple=16,
    max_pixels=1024 * 1024,
    max_steps=50,
    default_size=1024,
    default_steps=4,
    default_guidance=3.5,
    strength=0.9,
)


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "red").save(buffer, format="PNG")
    return buffer.getvalue()


def refused(request: ImageRequest, rules: ModelRules = SD) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        resolve(request, rules)
    return caught.value


def test_defaults_fill_what_the_request_leaves_open() -> None:
    work = resolve(ImageRequest(model="sd", prompt="a cat"), SD)
    assert (work.width, work.height, work.steps, work.guidance, work.strength) == (256, 256, 20, 7.5, 0.8)
    assert 0 <= work.seed < 2**32 and work.n == 1 and work.output_format == "png"


def test_the_request_wins_over_defaults_and_its_seed_is_kept() -> None:
    request = ImageRequest(model="sd", prompt="a cat", width=128, height=64, steps=3, guidance=1.0, seed=7, n=3)
    work = resolve(request, SD)
    assert (work.width, work.height, work.steps, work.guidance) == (128, 64, 3, 1.0)
    assert work.seeds == [7, 8, 9]


@pytest.mark.parametrize(("rules", "width", "height"), [(SD, 100, 64), (SD, 64, 4), (FLUX, 72, 64), (FLUX, 1024, 8)])
def test_sizes_off_the_models_grid_are_invalid_size(rules: ModelRules, width: int, height: int) -> None:
    error = refused(ImageRequest(model=rules.name, prompt="x", width=width, height=height), rules)
    assert error.code is ErrorCode.INVALID_SIZE and error.param == "size"
    assert f"multiples of {rules.multiple}" in error.message and f"{width}x{height}" in error.message


def test_more_pixels_than_configured_is_invalid_size() -> None:
    error = refused(ImageRequest(model="sd", prompt="x", width=1024, height=512))
    assert error.code is ErrorCode.INVALID_SIZE
    assert "at most 262144 pixels" in error.message


def test_flux_takes_multiples_of_16() -> None:
    assert (resolve(ImageRequest(model="flux", prompt="x", width=80, height=48), FLUX).width) == 80


@pytest.mark.parametrize("steps", [0, 41])
def test_steps_beyond_the_maximum_are_refused(steps: int) -> None:
    error = refused(ImageRequest(model="sd", prompt="x", steps=steps))
    assert error.code is ErrorCode.INVALID_REQUEST and error.param == "steps"
    assert "1 to 40 steps" in error.message


def test_a_generation_needs_a_prompt_and_an_edit_an_image() -> None:
    assert refused(ImageRequest(model="sd", prompt="  ")).code is ErrorCode.INVALID_PROMPT
    edit = refused(ImageRequest(model="sd", prompt="x", operation=Operation.EDIT))
    assert edit.code is ErrorCode.INVALID_REQUEST and edit.param == "image"


def test_an_operation_the_model_lacks_is_not_supported() -> None:
    rules = ModelRules(
        **{**{f: getattr(SD, f) for f in SD.__struct_fields__}, "operations": frozenset({Operation.GENERATE})}
    )
    error = refused(ImageRequest(model="sd", operation=Operation.VARIATION, images=(png(64, 64),)), rules)
    assert error.code is ErrorCode.OPERATION_NOT_SUPPORTED


def test_an_edit_without_a_size_keeps_its_image_size_fitted_to_the_rules() -> None:
    work = resolve(ImageRequest(model="sd", prompt="x", operation=Operation.EDIT, images=(png(100, 60),)), SD)
    assert (work.width, work.height) == (96, 56)
    big = resolve(ImageRequest(model="sd", operation=Operation.VARIATION, images=(png(2048, 1024),)), SD)
    assert (big.width, big.height) == (720, 360) and big.width * big.height <= SD.max_pixels
    assert big.prompt == "" and big.image is not None


def test_fit_size_never_goes_below_one_step() -> None:
    assert fit_size(3, 3, FLUX) == (16, 16)


def test_only_generations_batch_and_they_batch_on_what_a_call_shares() -> None:
    a = resolve(ImageRequest(model="sd", prompt="a", negative_prompt="blur", width=64, height=64, seed=1), SD)
    b = resolve(ImageRequest(model="sd", prompt="b", negative_prompt="dark", width=64, height=64, n=2), SD)
    c = resolve(ImageRequest(model="sd", prompt="c", negative_prompt="blur", width=64, height=128), SD)
    assert a.batch_key == b.batch_key != c.batch_key
    # No negative prompt is drawn unlike an empty one (SDXL: zeros), which it would get in a batch with one.
    none = resolve(ImageRequest(model="sd", prompt="d", width=64, height=64), SD)
    assert none.batch_key is not None and none.batch_key != a.batch_key
    edit = resolve(ImageRequest(model="sd", prompt="x", operation=Operation.EDIT, images=(png(64, 64),)), SD)
    assert edit.batch_key is None


def test_output_format_is_png_unless_jpeg_or_webp() -> None:
    assert resolve(ImageRequest(model="sd", prompt="x", output_format="jpeg"), SD).output_format == "jpeg"
    assert resolve(ImageRequest(model="sd", prompt="x", output_format="gif"), SD).output_format == "png"


@pytest.mark.parametrize("seed", [-1, 2**64 - 1])
def test_seeds_a_generator_cannot_take_are_refused(seed: int) -> None:
    error = refused(ImageRequest(model="sd", prompt="x", seed=seed, n=2))
    assert error.code is ErrorCode.INVALID_REQUEST and error.param == "seed"


def test_the_largest_seeds_are_taken() -> None:
    assert resolve(ImageRequest(model="sd", prompt="x", seed=2**64 - 3, n=2), SD).seeds == [2**64 - 3, 2**64 - 2]


def edit(image: bytes, mask: bytes | None = None, **fields: object) -> ImageRequest:
    return ImageRequest(model="sd", prompt="x", operation=Operation.EDIT, images=(image,), mask=mask, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("image", "words"),
    [
        (bomb_png(), "50000x50000, 2500000000 pixels; input images may have at most 16777216 pixels"),
        (huge_valid_png(), "12000x12000, 144000000 pixels"),
        (zero_png(), "declares 0x0 pixels"),
        (png_header(0, 64), "declares 0x64 pixels"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 broken", "is not an image that can be read"),
        (webp_bomb(), "16384x16384, 268435456 pixels"),
    ],
)
def test_an_input_image_is_judged_by_its_header_before_any_decode(image: bytes, words: str) -> None:
    """A bomb, a header of 0x0 (once a ZeroDivisionError), a broken file: each the client's invalid_request."""
    for request in (edit(image), edit(image, width=64, height=64)):
        error = refused(request)
        assert error.code is ErrorCode.INVALID_REQUEST and error.param == "image", error
        assert words in error.message


def test_the_mask_is_judged_as_the_image_is() -> None:
    error = refused(edit(png(64, 64), mask=bomb_png()))
    assert error.code is ErrorCode.INVALID_REQUEST and error.param == "mask"
    assert refused(edit(png(64, 64), mask=zero_png())).param == "mask"


def test_the_pixel_bound_is_the_models() -> None:
    strict = ModelRules(**{**{f: getattr(SD, f) for f in SD.__struct_fields__}, "max_input_pixels": 100 * 60})
    assert (resolve(edit(png(100, 60)), strict).width, resolve(edit(png(100, 60)), strict).height) == (96, 56)
    error = refused(edit(png(100, 61)), strict)
    assert error.code is ErrorCode.INVALID_REQUEST and "at most 6000 pixels" in error.message


def test_a_header_is_read_without_decoding_the_image() -> None:
    """The truncated file's header is whole: it passes here, and its decode fails later (local_backend.images)."""
    assert declared_size(truncated_png(), "image", 64 * 64) == (64, 64)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
@pytest.mark.parametrize("lossless", [False, True])
@pytest.mark.parametrize("size", [(1, 1), (37, 5), (640, 480), (16383, 3)])
def test_a_webp_header_is_read_as_pillow_reads_it(mode: str, lossless: bool, size: tuple[int, int]) -> None:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="WEBP", lossless=lossless)
    data = buffer.getvalue()
    assert webp_dimensions(data) == Image.open(io.BytesIO(data)).size == size
    assert webp_dimensions(data[:29]) is None and webp_dimensions(b"RIFF\0\0\0\0WEBPVP8Z" + bytes(20)) is None
