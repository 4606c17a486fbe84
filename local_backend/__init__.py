"""The local diffusers backend: pipelines on this machine's GPU (or CPU), batched behind a bounded queue.

Importing the package switches the Hugging Face libraries to offline mode before any of
its modules imports them (``huggingface_hub`` reads the switch once, at its own import):
models come from a directory or the local cache, never from the network. The gateway never
imports this package (its ``local`` adapter imports ``local_backend.engine`` only when it
runs models in process); the settings a gateway-only install reads are ``schemas.local``,
and the worker's wire protocol is ``schemas.worker``.
"""

from __future__ import annotations

import logging
import os

for _name in ("HF_HUB_OFFLINE", "DIFFUSERS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS"):
    os.environ.setdefault(_name, "1")


class _DropLogNoise(logging.Filter):
    """Drops two notices the libraries log on every start or edit that say nothing about serving:
    CLIP's image processor falling back to Pillow without torchvision (no pipeline here uses it), and
    "modules that should be kept in float32: []" when SDXL's image-to-image re-casts its VAE."""

    NOISE = ("requires torchvision", "should be kept in float32: []")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in self.NOISE)


logging.getLogger("transformers.utils.import_utils").addFilter(_DropLogNoise())
logging.getLogger("diffusers.models.modeling_utils").addFilter(_DropLogNoise())
