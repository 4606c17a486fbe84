"""A real local worker (``create_worker_app``) on a loopback port, served by uvicorn in a background thread."""

from __future__ import annotations

from typing import Any

from local_backend.server import create_worker_app
from schemas.local import LocalBackendSettings
from tests.servers import ThreadedServer, free_port


class WorkerServer(ThreadedServer):
    """The worker app listening on 127.0.0.1; ``.url`` is its base URL and ``.engine`` its engine."""

    startup_timeout_s = 60.0  # the worker loads its models before it listens

    def __init__(self, settings: LocalBackendSettings) -> None:
        super().__init__(create_worker_app(settings))

    @property
    def engine(self) -> Any:
        return self.app.state.engine


def closed_port_url() -> str:
    """A loopback URL nobody listens on: a worker that is down."""
    return f"http://127.0.0.1:{free_port()}"
