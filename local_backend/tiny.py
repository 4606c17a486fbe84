"""Tiny random-weight SD, SDXL and Flux pipelines, built from configs alone (no download).

They serve the tests and the offline default config: each is a real diffusers pipeline
of the real architecture with every size shrunk, saved with ``save_pretrained`` and
loaded back through the same loader as a real model. What they draw is noise.

A model is built once into ``$IMAGE_GATEWAY_MODEL_DIR/<kind>`` (default
``var/models/<kind>``), into a temporary directory renamed into place, so that two
processes building at once both end up with one complete copy.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

__all__ = [
    "BUILTIN_PREFIX",
    "TINY_KINDS",
    "build_tiny_pipeline",
    "clip_tokenizer",
    "ensure_built",
    "ensure_tiny",
    "model_root",
]

# A diffusers pipeline. Typed loosely: under mypy diffusers' lazy imports resolve to placeholder classes.
Pipeline = Any
BUILTIN_PREFIX = "builtin:"
MODEL_DIR_ENV = "IMAGE_GATEWAY_MODEL_DIR"
DEFAULT_MODEL_ROOT = Path("var/models")
# Written last into a finished model directory: the builder version that made it. A copy
# without it is incomplete, one with another version is rebuilt.
STAMP = "tiny-build.txt"
BUILD_VERSION = "1"
# The weights are drawn from this seed, so every machine builds the same model.
WEIGHT_SEED = 0

TEXT_WIDTH = 32  # hidden size of every tiny text encoder
MAX_TOKENS = 77  # what real CLIP reads; padding to it costs next to nothing at this width
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"


def model_root() -> Path:
    """Where built-in models are kept: ``$IMAGE_GATEWAY_MODEL_DIR``, else ``var/models``."""
    return Path(os.environ.get(MODEL_DIR_ENV) or DEFAULT_MODEL_ROOT)


def _byte_level_alphabet() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the 256 byte values (as GPT-2 and CLIP)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(byte) if byte in printable else chr(next(extra)) for byte in range(256)]


def clip_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer over single bytes: every byte and byte-at-end-of-word, and no merges."""
    alphabet = _byte_level_alphabet()
    tokens = [CLIP_BOS, CLIP_EOS, *alphabet, *(f"{char}</w>" for char in alphabet)]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_TOKENS)


def t5_tokenizer() -> T5Tokenizer:
    """A T5 (unigram) tokenizer over lower-case letters, digits and the word marker."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(char, -3.0) for char in "abcdefghijklmnopqrstuvwxyz0123456789"]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=MAX_TOKENS)


def _clip_config(tokenizer: CLIPTokenizer, **extra: Any) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_WIDTH,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def _vae(latent_channels: int = 4, **extra: Any) -> AutoencoderKL:
    """Four blocks: the real models' factor of 8 between pixels and latents, and fast at 64-512 px."""
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(4, 8, 16, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=64,
        force_upcast=False,  # already float32; upcasting would re-cast it at every edit
        # Attention over every latent pixel grows with the square of the image: 1 GB at 1024x1024.
        mid_block_add_attention=False,
        **extra,
    )


def _ddim() -> DDIMScheduler:
    """Stable Diffusion's noise schedule, stepped by DDIM: deterministic, so a seed fixes the image."""
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def _tiny_sd() -> Pipeline:
    tokenizer = clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        # Attention only at the lowest resolution: its cost grows with the square of the pixels.
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    return StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(_clip_config(tokenizer)),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=_ddim(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _tiny_sdxl() -> Pipeline:
    time_embed = 8
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=2 * TEXT_WIDTH,  # both text encoders' hidden states side by side
        attention_head_dim=8,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed,
        projection_class_embeddings_input_dim=6 * time_embed + TEXT_WIDTH,
        norm_num_groups=8,
    )
    tokenizer = clip_tokenizer()
    return StableDiffusionXLPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(_clip_config(tokenizer)),
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(tokenizer, projection_dim=TEXT_WIDTH)),
        tokenizer=tokenizer,
        tokenizer_2=clip_tokenizer(),
        unet=unet,
        scheduler=_ddim(),
    )


def _tiny_flux() -> Pipeline:
    latent_channels = 4
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * latent_channels,  # latents are packed 2x2 into tokens
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_WIDTH,
        pooled_projection_dim=TEXT_WIDTH,
        axes_dims_rope=(4, 6, 6),
    )
    tokenizer_2 = t5_tokenizer()
    t5 = T5Config(
        vocab_size=len(tokenizer_2),
        d_model=TEXT_WIDTH,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=tokenizer_2.pad_token_id,
        eos_token_id=tokenizer_2.eos_token_id,
    )
    tokenizer = clip_tokenizer()
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
        vae=_vae(
            latent_channels, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1, scaling_factor=1.5
        ),
        text_encoder=CLIPTextModel(_clip_config(tokenizer)),
        tokenizer=tokenizer,
        text_encoder_2=T5EncoderModel(t5),
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


_BUILDERS: dict[str, Callable[[], Pipeline]] = {
    "tiny-sd": _tiny_sd,
    "tiny-sdxl": _tiny_sdxl,
    "tiny-flux": _tiny_flux,
}
TINY_KINDS = tuple(_BUILDERS)


def build_tiny_pipeline(kind: str) -> Pipeline:
    """A fresh tiny pipeline of ``kind`` (``tiny-sd``, ``tiny-sdxl`` or ``tiny-flux``), weights from a fixed seed."""
    if kind not in _BUILDERS:
        raise ValueError(f"no built-in model {kind!r}; there are {', '.join(TINY_KINDS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(WEIGHT_SEED)
        return _BUILDERS[kind]()


def ensure_tiny(kind: str, root: Path | None = None) -> Path:
    """The directory of the built-in model ``kind``, building it there first when absent or out of date."""
    return ensure_built(kind, lambda: build_tiny_pipeline(kind), root)


def ensure_built(name: str, build: Callable[[], Pipeline], root: Path | None = None) -> Path:
    """``root/name`` holding what ``build`` makes, saved with ``save_pretrained``; built only when absent.

    Safe when several processes build at once: each builds into its own temporary
    directory and renames it into place; the first rename wins and the others keep it.
    """
    root = root or model_root()
    target = root / name
    if _is_current(target):
        return target
    pipeline = build()
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        pipeline.save_pretrained(staging)
        (staging / STAMP).write_text(BUILD_VERSION, encoding="utf-8")
        _move_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _is_current(target: Path) -> bool:
    """Built completely by this version of the builder (the stamp is written last, before the rename)."""
    try:
        return (target / STAMP).read_text(encoding="utf-8") == BUILD_VERSION
    except OSError:
        return False


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename the finished build onto ``target``: a racing builder's copy is kept, an outdated one replaced."""
    try:
        os.rename(staging, target)
        return
    except OSError:
        if _is_current(target):
            return  # another process finished first; its copy is the same model
    # An outdated build is in the way: move it aside (atomically) and put ours in its place.
    outdated = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
    try:
        with contextlib.suppress(FileNotFoundError):  # a racing builder may have moved it already
            os.rename(target, outdated / target.name)
        try:
            os.rename(staging, target)
        except OSError:
            if not _is_current(target):
                raise
    finally:
        shutil.rmtree(outdated, ignore_errors=True)
