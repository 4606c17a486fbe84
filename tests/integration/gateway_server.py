"""A real gateway on a loopback port, served by uvicorn in a background thread."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

import yaml

from gateway.app import create_app
from gateway.config import GatewayConfig, parse_config
from gateway.serving import uvicorn_options
from tests import openai_spec
from tests.servers import ThreadedServer


class GatewayServer(ThreadedServer):
    """``create_app(config)`` listening on 127.0.0.1; ``.url`` is its base URL."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        super().__init__(create_app(config), **uvicorn_options(config.server))  # bounded as `serve` bounds them

    def start(self) -> Self:
        super().start()
        openai_spec.serving(self.url)  # its root /v1 answers are held to OpenAI's document
        return self

    def stop(self) -> None:
        openai_spec.retired(self.url)
        super().stop()


def gateway_config(
    providers: dict[str, dict[str, Any]],
    models: list[dict[str, Any]],
    store: Path,
    server: dict[str, Any] | None = None,
    **sections: Any,
) -> GatewayConfig:
    """A config for tests, checked by the same code as a file."""
    raw = {
        "server": server or {},
        "providers": providers,
        "models": models,
        "image_store": {"path": str(store)},
        **sections,
    }
    text = yaml.safe_dump(raw, sort_keys=False)
    return parse_config(text, "<test config>")
