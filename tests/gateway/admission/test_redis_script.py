"""The limiter's script client against real Redis servers: the shared one and ones these tests start and stop."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import uvloop
from redis.exceptions import AuthenticationError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.admission.redis_script import RedisScript
from tests.redis_support import OwnRedis, require_shared_redis

ECHO = """
-- ARGV[1]: seconds to busy-wait before answering; returns ARGV, so that a reply shows whose it is
local function now() local t = redis.call('TIME') return t[1] + t[2] / 1e6 end
local start = now()
while now() - start < tonumber(ARGV[1]) do end
return ARGV
"""
SET = "-- KEYS[1]: the key to set to ARGV[1]; returns the value read back\nredis.call('SET', KEYS[1], ARGV[1])\n" + (
    "return redis.call('GET', KEYS[1])"
)
PASSWORD = "s3cret-" + uuid.uuid4().hex


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
async def echo(own_redis: OwnRedis) -> AsyncIterator[RedisScript]:
    script = RedisScript(ECHO, own_redis.url, timeout_s=5.0)
    yield script
    await script.aclose()


def script_connections(server: OwnRedis) -> int:
    """Clients of ``server`` whose last command ran a script (ours; not the one asking)."""
    clients = redis.Redis(port=server.port, password=server.password or None).client_list()
    return sum(client["cmd"] in ("evalsha", "eval") for client in clients)


def connections_received(admin: redis.Redis) -> int:
    return int(admin.info("stats")["total_connections_received"])


def messages(exc: BaseException) -> str:
    """Everything an exception and the ones it chains would print."""
    text = ""
    current: BaseException | None = exc
    while current is not None:
        text += f"{current!s} {current!r} "
        current = current.__cause__ or current.__context__
    return text


# --- pipelining ---


async def test_concurrent_calls_each_get_their_own_reply() -> None:
    script = RedisScript(ECHO, require_shared_redis())
    try:
        replies = await asyncio.gather(*(script(args=[0, index, f"call-{index}"]) for index in range(200)))
        assert replies == [[b"0", str(index).encode(), f"call-{index}".encode()] for index in range(200)]
    finally:
        await script.aclose()


async def test_concurrent_first_calls_open_one_connection(own_redis: OwnRedis, echo: RedisScript) -> None:
    await asyncio.gather(*(echo(args=[0, index]) for index in range(50)))
    assert script_connections(own_redis) == 1


# --- NOSCRIPT ---


async def test_a_flushed_script_is_run_again_by_eval(own_redis: OwnRedis, echo: RedisScript) -> None:
    assert await echo(args=[0, "first"]) == [b"0", b"first"]  # a new server: NOSCRIPT already, then EVAL
    server = redis.Redis(port=own_redis.port)
    server.script_flush()
    replies = await asyncio.gather(*(echo(args=[0, index]) for index in range(20)))
    assert replies == [[b"0", str(index).encode()] for index in range(20)]
    assert server.script_exists(echo.sha) == [True]


async def test_other_error_replies_raise(own_redis: OwnRedis) -> None:
    script = RedisScript("return redis.call('INCR', KEYS[1])", own_redis.url)
    redis.Redis(port=own_redis.port).set("text", "not a number")
    try:
        with pytest.raises(redis.ResponseError, match="not an integer"):
            await script(keys=["text"])
        assert await script(keys=["counter"]) == 1  # the connection still serves
    finally:
        await script.aclose()


# --- URLs: login, database, socket, TLS ---


async def test_password_and_database(tmp_path: Path) -> None:
    server = OwnRedis(tmp_path, password=PASSWORD).start()
    admin = redis.Redis(port=server.port, password=PASSWORD)
    admin.acl_setuser("gateway", enabled=True, passwords=[f"+{PASSWORD}-user"], keys=["*"], commands=["+@all"])
    try:
        for url, db in (
            (f"redis://:{PASSWORD}@127.0.0.1:{server.port}/3", 3),
            (f"redis://gateway:{PASSWORD}-user@127.0.0.1:{server.port}/5", 5),
            (f"redis://:{PASSWORD}@127.0.0.1:{server.port}", 0),
        ):
            script = RedisScript(SET, url)
            try:
                assert await script(keys=["where"], args=[url]) == url.encode()
            finally:
                await script.aclose()
            assert redis.Redis(port=server.port, password=PASSWORD, db=db).get("where") == url.encode()
        assert admin.dbsize() == 1  # db 0 only holds what the URL without a db wrote
    finally:
        server.stop()


async def test_a_refused_login_never_shows_the_password(tmp_path: Path) -> None:
    server = OwnRedis(tmp_path, password=PASSWORD).start()
    wrong = f"{PASSWORD}-wrong"
    try:
        for url in (f"redis://:{wrong}@127.0.0.1:{server.port}/0", f"redis://nobody:{wrong}@127.0.0.1:{server.port}"):
            script = RedisScript(SET, url)
            assert wrong not in repr(script)
            with pytest.raises(AuthenticationError) as caught:
                await script(keys=["k"], args=["v"])
            assert wrong not in messages(caught.value)
            await script.aclose()
        script = RedisScript(SET, f"redis://:{wrong}@127.0.0.1:{server.port}/99")  # no such database
        with pytest.raises(AuthenticationError):
            await script(keys=["k"], args=["v"])
        await script.aclose()
    finally:
        server.stop()
    unreachable = RedisScript(SET, f"redis://:{wrong}@127.0.0.1:{server.port}/0", timeout_s=0.5)
    with pytest.raises(RedisConnectionError) as refused:
        await unreachable(keys=["k"], args=["v"])
    assert wrong not in messages(refused.value)


async def test_a_missing_database_is_a_connection_error(own_redis: OwnRedis) -> None:
    script = RedisScript(SET, f"redis://127.0.0.1:{own_redis.port}/99")
    with pytest.raises(RedisConnectionError, match="database 99"):
        await script(keys=["k"], args=["v"])
    await script.aclose()


async def test_unix_socket_with_a_database(tmp_path: Path) -> None:
    socket = tmp_path / "redis.sock"
    server = OwnRedis(tmp_path, extra_args=["--unixsocket", str(socket), "--unixsocketperm", "700"]).start()
    script = RedisScript(SET, f"unix://{socket}?db=2")
    try:
        assert await script(keys=["where"], args=["socket"]) == b"socket"
        assert redis.Redis(port=server.port, db=2).get("where") == b"socket"
    finally:
        await script.aclose()
        server.stop()


async def test_rediss_speaks_tls() -> None:
    """To a plaintext Redis, TLS fails (as an error the limiter catches) rather than talking in clear."""
    script = RedisScript(ECHO, require_shared_redis().replace("redis://", "rediss://"), timeout_s=0.5)
    with pytest.raises(RedisError):
        await script(args=[0])
    await script.aclose()


@pytest.mark.parametrize(
    "url",
    [
        f"http://user:{PASSWORD}@127.0.0.1:6379",
        f"redis://:{PASSWORD}@127.0.0.1:6379/0?ssl_cert_reqs=none",
        f"redis://:{PASSWORD}@127.0.0.1:port/0",
        "unix://",
        "",
    ],
    ids=["http", "ssl-query", "port-not-a-number", "unix-without-path", "empty"],  # the same on every xdist worker
)
def test_urls_it_cannot_honour_are_refused_at_once(url: str) -> None:
    with pytest.raises(ValueError) as caught:
        RedisScript(ECHO, url)
    assert PASSWORD not in messages(caught.value)


# --- failures ---


async def test_a_lost_connection_fails_every_pending_call_then_reconnects(own_redis: OwnRedis) -> None:
    script = RedisScript(ECHO, own_redis.url, timeout_s=5.0)
    try:
        pending = [asyncio.ensure_future(script(args=[2 if index == 0 else 0, index])) for index in range(20)]
        await asyncio.sleep(0.3)  # all sent, the first still busy in Redis
        own_redis.stop()
        results = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 2.0)
        assert all(isinstance(result, RedisConnectionError) for result in results), results
        with pytest.raises(RedisConnectionError):  # Redis is away: the next call fails too, at once
            await script(args=[0])
        own_redis.start()
        assert await script(args=[0, "back"]) == [b"0", b"back"]
    finally:
        await script.aclose()


async def test_a_timed_out_call_keeps_its_place_in_line(own_redis: OwnRedis) -> None:
    script = RedisScript(ECHO, own_redis.url, timeout_s=0.5)
    try:
        await script(args=[0, "warm"])
        admin = redis.Redis(port=own_redis.port)  # one connection, kept: it counts once, before
        connections = connections_received(admin)
        with pytest.raises(RedisTimeoutError):
            await script(args=[0.8, "slow"])
        # Sent while Redis is still busy with the slow one: its reply comes after the slow one's.
        assert await script(args=[0, "next"]) == [b"0", b"next"]
        assert await script(args=[0, "after"]) == [b"0", b"after"]
        assert connections_received(admin) == connections  # one slow answer costs no reconnect
    finally:
        await script.aclose()


class SilentServer:
    """Accepts connections and never answers: a Redis gone without closing them."""

    def __init__(self) -> None:
        self.connections: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections.append(writer)
        await reader.read()

    async def stop(self) -> None:
        for writer in self.connections:
            writer.close()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def silent() -> AsyncIterator[SilentServer]:
    server = SilentServer()
    yield server
    await server.stop()


async def test_a_connection_that_never_answers_is_dropped(silent: SilentServer) -> None:
    script = RedisScript(ECHO, await silent.start(), timeout_s=0.05)
    try:
        with pytest.raises(RedisTimeoutError):
            await script(args=[0])
        await asyncio.sleep(0.2)  # four call timeouts without a byte from Redis
        with pytest.raises(RedisTimeoutError):
            await script(args=[0])
        assert len(silent.connections) == 1
        with pytest.raises(RedisTimeoutError):
            await script(args=[0])
        assert len(silent.connections) == 2  # that one was dropped: the next call connected again
    finally:
        await script.aclose()


async def test_a_login_that_never_answers_times_out(silent: SilentServer) -> None:
    url = (await silent.start()).replace("redis://", f"redis://:{PASSWORD}@")
    script = RedisScript(ECHO, url, timeout_s=0.1)
    with pytest.raises(RedisTimeoutError) as caught:
        await asyncio.wait_for(script(args=[0]), 2.0)
    assert PASSWORD not in messages(caught.value)
    await script.aclose()


async def test_aclose_fails_pending_calls(echo: RedisScript) -> None:
    await echo(args=[0])
    pending = asyncio.ensure_future(echo(args=[1]))
    await asyncio.sleep(0.1)
    await echo.aclose()
    with pytest.raises(RedisConnectionError):
        await pending


def test_the_same_on_uvloop(own_redis: OwnRedis) -> None:
    """The gateway's server runs on uvloop, whose transports are not asyncio's classes."""

    async def scenario() -> None:
        script = RedisScript(ECHO, own_redis.url, timeout_s=0.5)
        try:
            replies = await asyncio.gather(*(script(args=[0, index]) for index in range(100)))
            assert replies == [[b"0", str(index).encode()] for index in range(100)]
            with pytest.raises(RedisTimeoutError):
                await script(args=[0.8, "slow"])
            assert await script(args=[0, "next"]) == [b"0", b"next"]
            own_redis.stop()
            with pytest.raises(RedisConnectionError):
                await script(args=[0])
            own_redis.start()
            assert await script(args=[0, "back"]) == [b"0", b"back"]
        finally:
            await script.aclose()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())
