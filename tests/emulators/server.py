"""Run an emulator (any ASGI app) under uvicorn in a background thread on loopback."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

import uvicorn

from .base import Emulator


class EmulatorServer:
    """A uvicorn server for one emulator, on its own thread and event loop.

    `port=0` picks a free port; `.base_url` is known once `start()` returns (the
    socket is bound before uvicorn starts). Use as a context manager or call
    `start()`/`stop()`.
    """

    def __init__(self, emulator: Emulator, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        self.emulator = emulator
        self.host = host
        self._requested_port = port
        self._log_level = log_level
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        """The port it listens on (after `start()`)."""
        if self._socket is None:
            raise RuntimeError("server not started")
        return int(self._socket.getsockname()[1])

    @property
    def base_url(self) -> str:
        """e.g. `http://127.0.0.1:54321` (after `start()`)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def url(self, path: str) -> str:
        """An absolute URL on this server."""
        return self.base_url + path

    def start(self, timeout: float = 10.0) -> EmulatorServer:
        """Bind, start uvicorn on a daemon thread, and wait until it serves."""
        if self._thread is not None:
            return self
        self._socket = _bind(self.host, self._requested_port)
        # On a wildcard address the emulator builds file URLs from the Host header instead.
        self.emulator.base_url = None if self.host in ("0.0.0.0", "::") else self.base_url
        config = uvicorn.Config(
            self.emulator,
            lifespan="off",
            log_level=self._log_level,
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name=f"emulator-{self.emulator.name}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError(f"{self.emulator.name} emulator failed to start") from self._error
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.emulator.name} emulator did not start within {timeout}s")
            time.sleep(0.01)
        return self

    def _run(self) -> None:
        assert self._server is not None and self._socket is not None
        try:
            self._server.run(sockets=[self._socket])
        except BaseException as exc:  # reported to start()
            self._error = exc

    def stop(self, timeout: float = 5.0) -> None:
        """Ask uvicorn to exit and wait for the thread."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        if self._socket is not None:
            self._socket.close()
        self._thread = None

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.base_url if self._socket is not None else "not started"
        return f"<EmulatorServer {self.emulator.name} {where}>"


def _bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket bound to (host, port); port 0 picks a free one."""
    # proto=IPPROTO_TCP (not 0): asyncio only turns Nagle off (TCP_NODELAY) on sockets that say
    # they are TCP, and without it a keep-alive answer written in two parts (headers, then body)
    # waits for the client's delayed ACK: 40 ms per request.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted sockets inherit it on Linux
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock
