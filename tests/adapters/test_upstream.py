"""The upstream client interface, the same on every transport behind it (adapters/upstream.py).

Each test runs against a real server on loopback: an ASGI app under uvicorn, or a raw socket
for the faults a well-behaved server cannot make (an answer cut off mid-body).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import email.policy
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from adapters.upstream import (
    MAPPED_MIN,
    TRANSPORTS,
    AnswerTooLarge,
    UpstreamClient,
    UpstreamFailure,
    build_upstream_client,
    encode_multipart,
)
from tests.servers import ThreadedServer, free_port


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/cookie`` sets a cookie and echoes the Cookie header it got; ``/echo`` echoes the body;
    ``/chunked/N`` streams N bytes without a length; ``/slow`` waits 2 s before answering."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path, headers = scope["path"], dict(scope["headers"])
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if path == "/slow":
        await asyncio.sleep(2)
    if path.startswith("/chunked/"):
        size = int(path.rsplit("/", 1)[1])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for offset in range(0, size, 1000):
            await send({"type": "http.response.body", "body": b"x" * min(1000, size - offset), "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    answer_headers = [(b"content-type", b"text/plain"), (b"X-Method", scope["method"].encode())]
    if path == "/cookie":
        answer_headers.append((b"set-cookie", b"session=tenant-a; Path=/"))
        body = headers.get(b"cookie", b"")
    if path.startswith("/sized/"):  # {"b64_json": "QUJD" * N + the body}, its length declared
        body = b'{"b64_json": "' + b"QUJD" * int(path.rsplit("/", 1)[1]) + body + b'"}'
        answer_headers.append((b"content-length", str(len(body)).encode()))
    status = 201 if path == "/echo" else 200
    await send({"type": "http.response.start", "status": status, "headers": answer_headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    with ThreadedServer(app) as running:
        yield running


@pytest.fixture(params=TRANSPORTS)
async def client(request: pytest.FixtureRequest) -> AsyncIterator[UpstreamClient]:
    upstream = build_upstream_client(request.param)
    yield upstream
    await upstream.aclose()


def send(client: UpstreamClient, url: str, body: bytes | None = None, **options: Any) -> Any:
    settings = {"connect_timeout": 2.0, "read_timeout": 5.0, "max_bytes": 1 << 20, **options}
    return client.send("POST" if body is not None else "GET", url, body=body, **settings)


async def test_answer_is_read_whole_with_status_and_headers(client: UpstreamClient, server: ThreadedServer) -> None:
    payload = bytes(range(256)) * 400
    answer = await send(client, server.url + "/echo", payload, headers={"Content-Type": "application/octet-stream"})
    assert answer.status == 201 and bytes(answer.body) == payload
    assert answer.headers.get("x-method") == "POST" and answer.headers.get("Content-Type") == "text/plain"


async def test_a_large_answer_has_a_mapping_of_its_own_and_is_checked_plain_as_it_arrives(
    client: UpstreamClient, server: ThreadedServer
) -> None:
    large, cap = server.url + f"/sized/{MAPPED_MIN // 4}", {"max_bytes": 4 * MAPPED_MIN}
    answer = await send(client, large, b"", **cap)
    assert isinstance(answer.body, memoryview) and answer.plain
    assert bytes(answer.body) == b'{"b64_json": "' + b"QUJD" * (MAPPED_MIN // 4) + b'"}'
    for impure in (b"Q\\/D", "é".encode()):
        answer = await send(client, large, impure, **cap)
        assert bytes(answer.body).endswith(impure + b'"}') and not answer.plain
    small = await send(client, server.url + "/sized/1", b"")
    assert isinstance(small.body, bytearray) and small.plain


async def test_no_cookie_is_sent_back(client: UpstreamClient, server: ThreadedServer) -> None:
    first = await send(client, server.url + "/cookie")
    assert first.headers["set-cookie"].startswith("session=tenant-a")
    second = await send(client, server.url + "/cookie")
    assert second.status == 200 and bytes(second.body) == b""


async def test_declared_length_over_the_cap_is_refused(client: UpstreamClient, server: ThreadedServer) -> None:
    with pytest.raises(AnswerTooLarge) as refused:
        await send(client, server.url + "/echo", b"y" * 5000, max_bytes=4999)
    assert refused.value.limit == 4999
    answer = await send(client, server.url + "/echo", b"y" * 5000, max_bytes=5000)
    assert len(answer.body) == 5000


async def test_streamed_answer_over_the_cap_is_refused(client: UpstreamClient, server: ThreadedServer) -> None:
    with pytest.raises(AnswerTooLarge):
        await send(client, server.url + "/chunked/50000", max_bytes=20000)
    answer = await send(client, server.url + "/chunked/50000", max_bytes=50000)
    assert bytes(answer.body) == b"x" * 50000


async def test_refused_connection_never_reached(client: UpstreamClient) -> None:
    with pytest.raises(UpstreamFailure) as failed:
        await send(client, f"http://127.0.0.1:{free_port()}/")
    assert not failed.value.reached and not failed.value.timed_out


async def test_slow_answer_times_out(client: UpstreamClient, server: ThreadedServer) -> None:
    with pytest.raises(UpstreamFailure) as failed:
        await send(client, server.url + "/slow", read_timeout=0.2)
    assert failed.value.reached and failed.value.timed_out


def socket_server(handle: Any) -> Iterator[str]:
    """A plain socket server on a thread: ``handle(connection, index)`` serves the index-th connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve() -> None:
        index = 0
        try:
            while True:
                connection, _ = listener.accept()
                with connection:
                    handle(connection, index)
                index += 1
        except OSError:
            return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    with contextlib.suppress(OSError):
        listener.shutdown(socket.SHUT_RDWR)
    listener.close()
    thread.join(timeout=5)


@pytest.fixture
def until_close_server() -> Iterator[str]:
    """Answers with neither a length nor chunks: the body ends where the connection does."""

    def handle(connection: socket.socket, _: int) -> None:
        connection.recv(65536)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nall of it")

    yield from socket_server(handle)


async def test_an_answer_that_ends_with_its_connection_is_read_whole(
    client: UpstreamClient, until_close_server: str
) -> None:
    answer = await send(client, until_close_server)
    assert answer.status == 200 and bytes(answer.body) == b"all of it"


@pytest.fixture
def cut_off_server() -> Iterator[str]:
    """Answers every request with a 1000-byte Content-Length, 10 bytes, and a closed socket."""

    def handle(connection: socket.socket, _: int) -> None:
        connection.recv(65536)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: text/plain\r\n\r\n")
        connection.sendall(b"0123456789")

    yield from socket_server(handle)


async def test_answer_cut_off_mid_body_is_a_failure(client: UpstreamClient, cut_off_server: str) -> None:
    with pytest.raises(UpstreamFailure) as failed:
        await send(client, cut_off_server)
    assert failed.value.reached and not failed.value.timed_out


def test_multipart_body_parses_back_to_its_fields_and_files() -> None:
    body, content_type = encode_multipart(
        {"prompt": "a cat\r\nin a hat", "n": "2"},
        [
            ("image", ("image.png", b"\x89PNG\r\n--not-a-boundary", "image/png")),
            ("mask", ('m"a.png', b"\x00", "image/png")),
        ],
    )
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    parts = [(part.get_param("name", header="content-disposition"), part) for part in message.iter_parts()]
    assert [name for name, _ in parts] == ["prompt", "n", "image", "mask"]
    assert parts[0][1].get_payload(decode=True) == b"a cat\r\nin a hat"
    assert parts[2][1].get_filename() == "image.png" and parts[2][1].get_content_type() == "image/png"
    assert parts[2][1].get_payload(decode=True) == b"\x89PNG\r\n--not-a-boundary"
    assert parts[3][1].get_filename() == "m%22a.png" and parts[3][1].get_payload(decode=True) == b"\x00"


def test_unknown_transport_is_named() -> None:
    with pytest.raises(ValueError, match="unknown upstream transport 'curl'"):
        build_upstream_client("curl")
    with pytest.raises(ValueError, match=r"'raw' .*failed the transport conformance cases"):
        build_upstream_client("raw")


@pytest.fixture
def recording_proxy() -> Iterator[tuple[str, list[bytes]]]:
    """A forward proxy that answers every request itself, 200 "via proxy", and keeps its request lines."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    lines: list[bytes] = []

    def serve() -> None:
        try:
            while True:
                connection, _ = listener.accept()
                with connection:
                    request = connection.recv(65536)
                    lines.append(request.split(b"\r\n", 1)[0])
                    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nvia proxy")
        except OSError:
            return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", lines
    with contextlib.suppress(OSError):
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() waiting in the thread
    listener.close()
    thread.join(timeout=5)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_proxy_from_the_environment_is_used_except_for_no_proxy_hosts(
    transport: str, recording_proxy: tuple[str, list[bytes]], server: ThreadedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy, lines = recording_proxy
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    upstream = build_upstream_client(transport)  # the environment is read when the client is made
    try:
        proxied = await send(upstream, "http://images.provider.example/v1/generate", b"{}")
        assert proxied.status == 200 and bytes(proxied.body) == b"via proxy"
        assert lines == [b"POST http://images.provider.example/v1/generate HTTP/1.1"]
        direct = await send(upstream, server.url + "/echo", b"straight")  # NO_PROXY: not through the proxy
        assert direct.status == 201 and bytes(direct.body) == b"straight" and len(lines) == 1
    finally:
        await upstream.aclose()


@pytest.fixture
def tls_server(tmp_path: Any) -> Iterator[tuple[str, str]]:
    """An HTTPS server on 127.0.0.1 with a certificate made here (openssl), and that certificate's file."""
    openssl = shutil.which("openssl")
    assert openssl, "the TLS test needs the openssl command (Debian: apt-get install openssl)"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def handle(connection: socket.socket, _: int) -> None:
        try:
            with context.wrap_socket(connection, server_side=True) as tls:
                while request := tls.recv(65536):  # kept alive: one answer per request
                    assert request.startswith(b"GET ")
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsecured")
        except (ssl.SSLError, OSError):  # a client that refused the certificate
            return

    for url in socket_server(handle):
        yield url.replace("http://", "https://"), str(cert)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_https_with_the_server_certificate_trusted(
    transport: str, tls_server: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """TLS verified against OpenSSL's default trust store (here: the test's certificate), kept alive."""
    url, cert = tls_server
    monkeypatch.setenv("SSL_CERT_FILE", cert)  # read when the client is made
    client = build_upstream_client(transport)
    try:
        first, second = await send(client, url), await send(client, url)
        assert bytes(first.body) == bytes(second.body) == b"secured"
    finally:
        await client.aclose()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_https_to_a_server_whose_certificate_is_not_trusted_is_refused(
    transport: str, tls_server: tuple[str, str]
) -> None:
    url, _ = tls_server  # the system's CA bundle does not hold the test's certificate
    client = build_upstream_client(transport)
    try:
        with pytest.raises(UpstreamFailure) as failed:
            await send(client, url)
        assert not failed.value.reached
    finally:
        await client.aclose()
