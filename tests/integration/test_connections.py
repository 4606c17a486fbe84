"""Bounded inbound connections, against `image-gateway serve` in its own process, over raw sockets.

What a client holds before and while it sends is bounded for everyone, authenticated or not: the
request line and headers (431), headers that never complete (408), an idle kept-alive connection,
a body that stalls or trickles (408), and one key's share of the in-flight body budget (429), so
stalled uploads cannot starve other clients. Memory is read from outside the process.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.admission.auth import hash_key
from tests.emulators import EmulatorServer
from tests.integration.conftest import PROVIDERS
from tests.servers import GatewayProcess

MiB = 1024 * 1024
MAX_BODY = 4 * MiB
BUDGET = 8 * MiB  # each key may hold half: one whole body at a time
GENERATE = "/nebul/v1/images/generations"


@pytest.fixture(scope="module")
def gateway(emulators: dict[str, EmulatorServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("connections")
    kind, extra, model = PROVIDERS["nebul"]
    config: dict[str, Any] = {
        "server": {
            "max_header_bytes": 16 * 1024,
            "header_timeout_s": 1.0,
            "keep_alive_timeout_s": 1.0,
            "body_idle_timeout_s": 1.0,
            "body_min_bytes_per_s": 64 * 1024,
            "max_body_bytes": MAX_BODY,
            "max_inflight_body_bytes": BUDGET,
            "max_inflight_body_share": 0.5,
        },
        "auth": {"keys": [{"name": "a", "hash": hash_key("key-a")}, {"name": "b", "hash": hash_key("key-b")}]},
        "image_store": {"path": str(tmp / "store"), "secret": "store-secret-of-the-connection-tests"},
        "providers": {"nebul": {"kind": kind, "base_url": emulators[kind].base_url, "api_key": "test-key", **extra}},
        "models": [{"name": "m", "targets": [{"provider": "nebul", "model": model}]}],
    }
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    process = GatewayProcess(path).wait_ready()
    yield process
    process.stop()


def connect(gateway: GatewayProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes, bool]:
    """Status, headers, body of one answer, and whether the server closed the connection after it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed inside the answer's body"
        body += chunk
    try:
        closed = sock.recv(1) == b""
    except (ConnectionResetError, TimeoutError):
        closed = True
    return status, headers, body, closed


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def body(prompt: str = "p") -> bytes:
    return json.dumps({"model": "m", "prompt": prompt, "response_format": "b64_json"}).encode()


def post_head(path: str, length: int, key: str = "key-a", extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


def served(gateway: GatewayProcess, key: str = "key-b") -> int:
    return httpx.post(gateway.url + GENERATE, content=body(), headers={"Authorization": f"Bearer {key}"}).status_code


def test_headers_past_the_cap_are_a_431_in_the_dialects_envelope(gateway: GatewayProcess) -> None:
    with connect(gateway) as sock:
        sock.sendall(post_head(GENERATE, 2, extra=f"X-Padding: {'a' * 20_000}\r\n") + b"{}")
        status, _, answer, closed = read_answer(sock)
    assert status == 431 and closed
    error = json.loads(answer)["error"]  # Nebul's envelope: {"error": {"message", "type", "code", ...}}
    assert "larger than 16384 bytes" in error["message"]
    # Many header lines, each small, count together; a path outside the dialects gets OpenAI's envelope.
    with connect(gateway) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: gw\r\n" + b"X-A: b\r\n" * 3000 + b"\r\n")
        status, _, answer, closed = read_answer(sock)
    assert status == 431 and closed and json.loads(answer)["error"]["message"]
    assert served(gateway) == 200  # and everyone else is served


def test_endless_headers_are_cut_off_and_memory_does_not_follow(gateway: GatewayProcess) -> None:
    before = rss_kib(gateway.process.pid)
    line = b"X-Flood: " + b"f" * 8183 + b"\r\n"  # 8 KiB a line
    sent = 0
    with connect(gateway) as sock:
        sock.sendall(b"POST " + GENERATE.encode() + b" HTTP/1.1\r\nHost: gw\r\n")
        try:
            for _ in range(16 * 1024):  # up to 128 MiB of headers
                sock.sendall(line)
                sent += len(line)
        except (BrokenPipeError, ConnectionResetError):
            pass
    assert sent < 32 * MiB, f"the server kept reading headers: {sent} bytes taken"
    assert rss_kib(gateway.process.pid) - before < 16 * 1024
    assert served(gateway) == 200


def test_headers_that_never_complete_are_a_408_and_a_silent_connection_is_closed(gateway: GatewayProcess) -> None:
    with connect(gateway) as sock:
        sock.sendall(b"POST " + GENERATE.encode() + b" HTTP/1.1\r\nHost: gw\r\n")  # and then nothing
        status, _, answer, closed = read_answer(sock)
    assert status == 408 and closed and "did not arrive within 1 s" in json.loads(answer)["error"]["message"]
    with connect(gateway) as sock:  # connects, sends nothing
        started = time.monotonic()
        assert sock.recv(1) == b""
        assert time.monotonic() - started < 8  # closed by the header deadline, not the test's socket timeout


def test_an_idle_kept_alive_connection_is_closed(gateway: GatewayProcess) -> None:
    with connect(gateway) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n")
        status, _headers, _, _ = read_answer(sock)  # read_answer's probe waits for more: the server closes first
        assert status == 200
        sock.settimeout(8)
        assert sock.recv(1) == b""


def test_a_stalled_body_is_a_408_and_gives_its_budget_back(gateway: GatewayProcess) -> None:
    with connect(gateway) as sock:
        sock.sendall(post_head(GENERATE, MAX_BODY) + b'{"model": "m", "prompt": "')  # then stalls
        status, _headers, answer, closed = read_answer(sock)
    assert status == 408 and closed
    assert "no part of the request body arrived for 1 s" in json.loads(answer)["error"]["message"]
    assert served(gateway, "key-a") == 200  # its reservation went back


def test_a_trickling_body_is_a_408(gateway: GatewayProcess) -> None:
    with connect(gateway) as sock:
        sock.sendall(post_head(GENERATE, MAX_BODY))
        try:
            for _ in range(40):  # a byte every 0.1 s: never idle for 1 s, far below 64 KiB/s
                sock.sendall(b" ")
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, _, answer, closed = read_answer(sock)
    assert status == 408 and closed and "slower than 65536 bytes/s" in json.loads(answer)["error"]["message"]


def test_one_keys_stalled_uploads_cannot_take_the_body_budget_from_another(gateway: GatewayProcess) -> None:
    """Key a declares large bodies and stalls: past its share it is refused (429), and key b is still served."""
    stalled = []
    try:
        first = connect(gateway)
        stalled.append(first)
        first.sendall(post_head(GENERATE, MAX_BODY, "key-a") + b"{")  # holds half the budget: its whole share
        time.sleep(0.2)
        with connect(gateway) as second:
            second.sendall(post_head(GENERATE, MAX_BODY, "key-a") + b"{")
            status, headers, answer, _ = read_answer(second)
        assert status == 429 and int(headers["retry-after"]) >= 1
        assert "this client is sending too many large requests at once" in json.loads(answer)["error"]["message"]
        assert served(gateway, "key-b") == 200
    finally:
        for sock in stalled:
            sock.close()
