"""Whether the weights of each local model are on this machine: what ``check-config`` reports.

A ``kind: local`` provider without ``workers`` loads its models in this process, from a
directory, the Hugging Face cache or the built-in tiny models (``schemas.local``); models
are never downloaded at run time. One whose weights are missing loads nothing: its requests
are answered ``model_unavailable`` (a fallback target serves them) and a worker with it
answers ``/health`` 503. Caught here first, by the operator, with the field to fix.

Read without torch, diffusers or huggingface_hub (a gateway-only install checks configs
too): the cache is found as huggingface_hub finds it (``HF_HUB_CACHE``, else ``HF_HOME``'s
``hub``, else ``~/.cache/huggingface/hub``) and an id is there when the snapshot its
``refs/main`` names holds ``model_index.json``, which is what loading it offline needs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from gateway.config import GatewayConfig
from schemas.local import LocalBackendSettings

__all__ = ["BUILTIN_MODELS", "hub_cache", "missing_weights", "weights_problem"]

BUILTIN_PREFIX = "builtin:"
# The built-in tiny models (local_backend.tiny.TINY_KINDS), built on first use: never missing.
BUILTIN_MODELS = ("tiny-sd", "tiny-sdxl", "tiny-flux")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")  # as local_backend.pipelines reads a path


def missing_weights(config: GatewayConfig) -> list[str]:
    """One line for each in-process local model whose weights are not here, naming the model and its field."""
    problems = []
    for provider_name, provider in config.providers.items():
        if not isinstance(provider, LocalBackendSettings) or provider.workers:
            continue  # remote workers check their own config
        for name, model in provider.models.items():
            problem = weights_problem(model.path)
            if problem is not None:
                where = f"$.providers.{provider_name}.models.{name}.path"
                problems.append(f"local model {name!r}: {problem} - at `{where}`")
    return problems


def weights_problem(path: str) -> str | None:
    """What is missing for a local model's ``path``, or None when its weights are on this machine."""
    if path.startswith(BUILTIN_PREFIX):
        kind = path.removeprefix(BUILTIN_PREFIX)
        if kind in BUILTIN_MODELS:
            return None
        return f"there is no built-in model {path!r}; there are {', '.join(BUILTIN_PREFIX + k for k in BUILTIN_MODELS)}"
    directory = Path(path).expanduser()
    if directory.is_dir():
        if (directory / "model_index.json").is_file():
            return None
        return f"{directory.resolve()} holds no diffusers model (no model_index.json)"
    if _HUB_ID.match(path) and not path.startswith((".", "/", "~")):
        if _cached(path):
            return None
        return (
            f"no directory {directory.resolve()} and no Hugging Face cache entry for {path!r} under {hub_cache()}"
            f" (weights are never downloaded at run time: `hf download {path}` fills the cache)"
        )
    return f"no directory {directory.resolve()}"


def hub_cache() -> Path:
    """The Hugging Face cache directory, as huggingface_hub finds it from the environment."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def _cached(repo_id: str) -> bool:
    repo = hub_cache() / ("models--" + repo_id.replace("/", "--"))
    try:
        revision = (repo / "refs" / "main").read_text(encoding="utf-8").strip()
    except OSError:
        return False
    return bool(revision) and (repo / "snapshots" / revision / "model_index.json").is_file()
