"""A real gateway on a loopback port, served by uvicorn in a background thread."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
import yaml

from gateway.app import create_app
from gateway.config import GatewayConfig, parse_config

STARTUP_TIMEOUT_S = 15.0


class GatewayServer:
    """``create_app(config)`` listening on 127.0.0.1; ``.url`` is its base URL."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self._server = uvicorn.Server(
            uvicorn.Config(create_app(config), log_level="warning", access_log=False, lifespan="on")
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GatewayServer:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway under test did not start; see the log above")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()

    def __enter__(self) -> GatewayServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


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
