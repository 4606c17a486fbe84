"""Settings of the local diffusers backend: a ``kind: local`` provider in the gateway's config.

This module imports neither torch nor diffusers, so a gateway-only install can read a
config that names a local provider.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

__all__ = ["LocalBackendSettings", "LocalModelSettings"]

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]


class LocalModelSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One diffusers pipeline: where its weights are and what it may be asked."""

    path: str = ""
    max_steps: PositiveInt = 50
    max_pixels: PositiveInt = 1024 * 1024


class LocalBackendSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="kind", tag="local"):
    """The local backend: in-process pipelines, or remote workers when ``workers`` lists their URLs."""

    models: dict[str, LocalModelSettings] = {}
    workers: list[str] = []
    device: Literal["auto", "cuda", "cpu"] = "auto"
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    queue_size: PositiveInt = 64
    max_batch_size: PositiveInt = 4
    batch_window_ms: Annotated[float, msgspec.Meta(ge=0)] = 10.0
