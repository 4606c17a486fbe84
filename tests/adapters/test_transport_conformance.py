"""Every upstream transport the config offers, against a hostile upstream on loopback (tests/adapters/hostile.py).

Each case is a way real-world HTTP goes wrong. The hand-written client this gateway once had
(``adapters/rawhttp.py``) failed 14 of them, httpx's own transport one, httpx over aiohttp one;
aiohttp's client is the transport left (docs/benchmarks.md, "The transport decision").
Memory is measured in bytes held (tracemalloc, with the cyclic collector off, so a buffer kept
alive by a reference cycle counts), never in time.
"""

from __future__ import annotations

import contextlib
import gc
import shutil
import ssl
import subprocess
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

import pytest

from adapters.upstream import TRANSPORTS, Answer, AnswerTooLarge, UpstreamClient, UpstreamFailure, build_upstream_client
from tests.adapters.hostile import ConnectProxy, HostileUpstream

MiB = 1 << 20


@pytest.fixture
async def hostile() -> AsyncIterator[HostileUpstream]:
    async with HostileUpstream() as upstream:
        yield upstream


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def client(transport: str) -> AsyncIterator[UpstreamClient]:
    upstream = build_upstream_client(transport)
    yield upstream
    await upstream.aclose()


async def send(client: UpstreamClient, url: str, body: bytes | None = None, **options: Any) -> Answer:
    settings = {"connect_timeout": 5.0, "read_timeout": 10.0, "max_bytes": 8 * MiB, **options}
    return await client.send("POST" if body is not None else "GET", url, body=body, **settings)


@contextlib.contextmanager
def held() -> Iterator[Callable[[], tuple[int, int]]]:
    """Bytes allocated since entering, as (now, at the peak); the cyclic collector is off meanwhile."""
    gc.collect()
    gc.disable()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    try:
        yield lambda: tuple(size - base for size in tracemalloc.get_traced_memory())  # type: ignore[return-value]
    finally:
        tracemalloc.stop()
        gc.enable()


async def test_a_connection_is_reused_after_a_whole_answer_and_closed_after_a_cut_short_one(
    client: UpstreamClient, hostile: HostileUpstream
) -> None:
    await send(client, hostile.url + "/plain")
    await send(client, hostile.url + "/chunked/100000")
    error = await send(client, hostile.url + f"/declared/500/{MiB}/{MiB}")  # read up to the error cap only
    assert error.status == 500 and len(error.body) == 32 * 1024
    await send(client, hostile.url + "/plain")
    assert [seen.connection for seen in hostile.requests] == [0, 0, 0, 1]


async def test_interim_answers_are_skipped(client: UpstreamClient, hostile: HostileUpstream) -> None:
    answer = await send(client, hostile.url + "/interim")
    assert answer.status == 200 and bytes(answer.body) == b"final"


async def test_bytes_after_an_answer_close_the_connection_and_reach_no_other_call(
    client: UpstreamClient, hostile: HostileUpstream
) -> None:
    first = await send(client, hostile.url + "/leftover")
    assert first.status == 200 and bytes(first.body) == b"first"
    assert "stolen" not in str(dict(first.headers))
    second = await send(client, hostile.url + "/plain")
    assert second.status == 200 and bytes(second.body) == b"plain"
    assert hostile.requests[1].connection != hostile.requests[0].connection


async def test_response_headers_are_capped(client: UpstreamClient, hostile: HostileUpstream) -> None:
    answer = await send(client, hostile.url + "/headers/60")  # 60 KiB of headers: fine
    assert answer.status == 200 and answer.headers["x-filler-59"] == "y" * 1000
    for kib in (70, 1024):  # past 64 KiB: an upstream error
        with pytest.raises(UpstreamFailure) as failed:
            await send(client, hostile.url + f"/headers/{kib}")
        assert failed.value.reached and not failed.value.timed_out


@pytest.mark.parametrize("path", ["/target/café/a b/ü.png?q=ä ö&r=1", "/target/%7Ekeep/\u00a0odd%zz/x"])
async def test_non_ascii_and_odd_urls_are_percent_encoded(
    client: UpstreamClient, hostile: HostileUpstream, path: str
) -> None:
    answer = await send(client, hostile.url + path)
    target = bytes(answer.body)
    assert answer.status == 200 and target.isascii() and b" " not in target
    # aiohttp writes a space in the query as "+", the form encoding of a space (no "+" is in the paths)
    assert unquote_to_bytes(target.replace(b"+", b"%20")) == unquote_to_bytes(path.encode())


@pytest.mark.parametrize(
    "url",
    [
        "http://[127.0.0.1/x",
        "http://127.0.0.1:99999/",
        "ftp://127.0.0.1/x",
        "http:///x",
        "http://a..b/x",
        "http://exa mple/",
    ],
)
async def test_an_unusable_url_is_an_upstream_failure(client: UpstreamClient, url: str) -> None:
    with pytest.raises(UpstreamFailure) as failed:
        await send(client, url)
    assert not failed.value.reached


async def test_a_post_the_upstream_read_is_never_sent_again(client: UpstreamClient, hostile: HostileUpstream) -> None:
    first = await send(client, hostile.url + "/stale", b"one")
    assert bytes(first.body) == b"plain"
    with pytest.raises(UpstreamFailure) as failed:
        await send(client, hostile.url + "/stale", b"two")  # read on the kept-alive connection, then closed
    assert failed.value.reached
    assert [seen.body for seen in hostile.requests] == [b"one", b"two"]


@pytest.mark.parametrize("kind", ["letters", "negative", "huge", "short"])
async def test_chunks_with_bad_sizes_are_an_upstream_failure(
    client: UpstreamClient, hostile: HostileUpstream, kind: str
) -> None:
    with pytest.raises(UpstreamFailure) as failed:
        await send(client, hostile.url + f"/bad-chunk/{kind}/1000")
    assert failed.value.reached and not failed.value.timed_out


@pytest.mark.parametrize("framing", ["chunked", "close"])
async def test_an_endless_body_stops_at_the_cap(client: UpstreamClient, hostile: HostileUpstream, framing: str) -> None:
    with held() as memory:
        with pytest.raises(AnswerTooLarge):
            await send(client, hostile.url + f"/endless/{framing}", max_bytes=4 * MiB)
        now, peak = memory()
    assert peak < 12 * MiB and now < MiB


async def test_a_compressed_answer_stops_at_the_cap_as_it_inflates(
    client: UpstreamClient, hostile: HostileUpstream
) -> None:
    with held() as memory:
        with pytest.raises(AnswerTooLarge):
            await send(client, hostile.url + "/gzip-bomb/256", max_bytes=4 * MiB)  # 256 MiB from about 256 KiB
        now, peak = memory()
    assert peak < 16 * MiB and now < MiB


async def test_a_declared_length_past_the_cap_allocates_nothing(
    client: UpstreamClient, hostile: HostileUpstream
) -> None:
    with held() as memory:
        with pytest.raises(AnswerTooLarge):
            await send(client, hostile.url + f"/declared/200/{10 << 30}/10", max_bytes=MiB)
        with pytest.raises(UpstreamFailure):  # an error answer is read up to its own cap: here, cut off
            await send(client, hostile.url + f"/declared/500/{10 << 30}/10", max_bytes=MiB)
        _, peak = memory()
    assert peak < MiB


async def test_an_error_answer_is_read_small_whatever_it_declares(
    client: UpstreamClient, hostile: HostileUpstream
) -> None:
    errors: list[BaseException] = []  # kept, as the router keeps the last error
    with held() as memory:
        for _ in range(8):  # 120 MiB declared, 100 bytes sent and the connection closed
            with pytest.raises(UpstreamFailure) as failed:
                await send(client, hostile.url + f"/declared/500/{120 * MiB}/100", max_bytes=200 * MiB)
            errors.append(failed.value)
        answer = await send(client, hostile.url + f"/declared/503/{120 * MiB}/{MiB // 4}", max_bytes=200 * MiB)
        now, peak = memory()  # the peak counts the upstream's own 256 KiB too
    assert answer.status == 503 and 0 < len(answer.body) <= 64 * 1024
    assert peak < 2 * MiB and now < MiB


async def test_a_failed_call_holds_no_buffer(client: UpstreamClient, hostile: HostileUpstream) -> None:
    errors: list[BaseException] = []
    with held() as memory:
        for _ in range(4):  # 2 MiB arrive in chunks, then a chunk announced and cut off
            with pytest.raises(UpstreamFailure) as failed:
                await send(client, hostile.url + f"/bad-chunk/short/{2 * MiB}")
            errors.append(failed.value)
        now, _ = memory()
    assert now < MiB


async def test_idle_pooled_connections_hold_no_answer(client: UpstreamClient, hostile: HostileUpstream) -> None:
    with held() as memory:
        answers = [await send(client, hostile.url + f"/chunked/{3 * MiB}") for _ in range(4)]
        assert [len(answer.body) for answer in answers] == [3 * MiB] * 4
        del answers
        now, _ = memory()
    assert now < MiB


# --------------------------------------------------------------------------- TLS and proxies


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context with a certificate made here (openssl) for ``upstream.example`` only, and its file."""
    openssl = shutil.which("openssl")
    assert openssl, "the TLS tests need the openssl command (Debian: apt-get install openssl)"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=upstream.example", "-addext", "subjectAltName=DNS:upstream.example"],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context, cert


async def test_tls_verifies_the_host_name(
    transport: str, certificate: tuple[ssl.SSLContext, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    context, cert = certificate
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trusted: only the name is wrong (127.0.0.1)
    async with HostileUpstream(tls=context) as upstream:
        client = build_upstream_client(transport)
        try:
            with pytest.raises(UpstreamFailure) as failed:
                await send(client, upstream.url + "/plain")
            assert not failed.value.reached and not upstream.requests
        finally:
            await client.aclose()


async def test_https_proxy_from_the_environment_and_no_proxy(
    transport: str,
    certificate: tuple[ssl.SSLContext, Path],
    hostile: HostileUpstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    context, cert = certificate
    async with HostileUpstream(tls=context) as secure, ConnectProxy(secure.port) as proxy:
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        client = build_upstream_client(transport)  # the environment is read when the client is made
        try:
            tunnelled = await send(client, f"https://upstream.example:{secure.port}/plain")  # the proxy resolves it
            assert tunnelled.status == 200 and bytes(tunnelled.body) == b"plain"
            assert proxy.lines == [f"CONNECT upstream.example:{secure.port} HTTP/1.1".encode()]
            direct = await send(client, hostile.url + "/plain")  # NO_PROXY: straight to the upstream
            assert bytes(direct.body) == b"plain" and len(proxy.lines) == 1
        finally:
            await client.aclose()
