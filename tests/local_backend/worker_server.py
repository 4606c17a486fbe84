"""A real local worker (``create_worker_app``) on a loopback port, served by uvicorn in a background thread."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

from local_backend.config import LocalBackendSettings
from local_backend.server import create_worker_app

STARTUP_TIMEOUT_S = 60.0


class WorkerServer:
    """The worker app listening on 127.0.0.1; ``.url`` is its base URL and ``.engine`` its engine."""

    def __init__(self, settings: LocalBackendSettings) -> None:
        self.app = create_worker_app(settings)
        self._server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="on"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def engine(self) -> Any:
        return self.app.state.engine

    def start(self) -> WorkerServer:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the worker under test did not start; see the log above")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()

    def __enter__(self) -> WorkerServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def closed_port_url() -> str:
    """A loopback URL nobody listens on: a worker that is down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"
