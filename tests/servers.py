"""Real servers for tests on loopback: an ASGI app in a uvicorn thread, or a gateway in its own process."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Self

import httpx
import uvicorn

from soak.ports import free_ports
from tests import openai_spec

__all__ = ["GatewayProcess", "ThreadedServer", "free_port"]


def free_port() -> int:
    """A loopback port nobody listens on (at the moment of asking)."""
    return free_ports(1)[0]


class ThreadedServer:
    """An ASGI app listening on 127.0.0.1, served by uvicorn in a background thread; ``.url`` is its base URL."""

    startup_timeout_s = 15.0

    def __init__(self, app: Any, **options: Any) -> None:
        self.app = app
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", **options)
        self._server = uvicorn.Server(config)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{type(self).__name__} did not start; see the log above")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class GatewayProcess:
    """``image-gateway serve`` in its own process, its output in a log file beside the config."""

    def __init__(self, config_file: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        openai_spec.serving(self.url)  # its root /v1 answers are held to OpenAI's document
        self.log = config_file.with_name(f"gateway-{self.port}.log")
        command = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config_file), "--port", str(self.port)]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [*command, *args],
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, path: str = "/ready", timeout: float = 30.0) -> Self:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"gateway process exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + path, timeout=1).status_code == 200:
                    return self
            time.sleep(0.1)
        raise AssertionError(f"gateway process on port {self.port} was not ready in {timeout} s")

    def stop(self) -> int:
        """SIGTERM, then the exit status (killed if it does not stop in time)."""
        openai_spec.retired(self.url)
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
