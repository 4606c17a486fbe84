"""Real Redis for tests: the machine's server at 127.0.0.1:6379, or one a test starts on its own port."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import redis

from tests.servers import free_port

SHARED_REDIS_URL = "redis://127.0.0.1:6379/0"


def require_shared_redis() -> str:
    """The shared Redis's URL; a clear failure (never a skip) when it is not there."""
    try:
        redis.Redis.from_url(SHARED_REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        raise AssertionError(
            f"these tests need a Redis at {SHARED_REDIS_URL} (start one: redis-server --port 6379 --save '' "
            f"--appendonly no --daemonize yes): {exc}"
        ) from exc
    return SHARED_REDIS_URL


class OwnRedis:
    """A redis-server this test starts and stops itself, on its own port.

    ``password`` makes it require one (``--requirepass``); ``extra_args`` go on its command line.
    """

    def __init__(
        self, workdir: Path, port: int | None = None, *, password: str = "", extra_args: Sequence[str] = ()
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise AssertionError(
                "this test starts its own Redis and needs `redis-server` on PATH (apt-get install redis-server)"
            )
        self.binary = binary
        self.port = port or free_port()
        self.workdir = workdir
        self.password = password
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        login = f":{self.password}@" if self.password else ""
        return f"redis://{login}127.0.0.1:{self.port}/0"

    def start(self) -> OwnRedis:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                *(["--requirepass", self.password] if self.password else []),
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port, password=self.password or None, socket_connect_timeout=0.2).ping()
                return self
            except redis.RedisError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise AssertionError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None
