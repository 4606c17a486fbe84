"""An open-loop HTTP/1.1 load generator on raw asyncio, meant to run in its own process.

Open loop: request *i* is due at ``start + i / rate`` whatever happened to the earlier
ones, so a server that falls behind shows it as latency (queueing), never as a lower
send rate. Every request goes out on a persistent (keep-alive) connection: an idle one
when there is one, else a new one, so slow answers never hold back the schedule.

The client is a small ``asyncio.Protocol`` that sends pre-encoded request bytes and reads
``Content-Length`` or chunked answers; it costs a few tens of microseconds per request,
which keeps it far from being the bottleneck at 1,000+ requests/s on one core.

A phase can also watch server processes (``watch``: pids): their CPU time (utime +
stime, the process and its descendants) and memory (VmRSS, VmHWM, with VmHWM reset at
the start of the window where the kernel allows) are read from /proc at the exact start
and end of the measured window, and RSS is sampled every 20 ms in between.

    python -m bench.loadgen < spec.json          # prints the result as JSON
    python -m bench.loadgen --url http://127.0.0.1:8080/v1/images/generations \\
        --body '{"prompt": "x"}' --rate 200 --duration 5

or from Python: ``asyncio.run(run_phase(PhaseSpec(...)))``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import msgspec

from bench.results import Latency, PhaseResult, PhaseSpec, ProcUse, SystemUse, dumps, loads

__all__ = [
    "PhaseResult",
    "PhaseSpec",
    "ProcSnapshot",
    "memory",
    "percentile",
    "process_tree",
    "run_phase",
    "snapshot",
    "summarize",
]

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


# --------------------------------------------------------------------------- statistics


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, nearest-rank; nan when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def summarize(values: Iterable[float]) -> Latency:
    """count, mean, p50, p90, p95, p99, p99.9 and max of `values` (milliseconds in, out)."""
    ordered = sorted(values)
    if not ordered:
        return Latency(count=0)
    return Latency(
        count=len(ordered),
        mean=sum(ordered) / len(ordered),
        p50=percentile(ordered, 50),
        p90=percentile(ordered, 90),
        p95=percentile(ordered, 95),
        p99=percentile(ordered, 99),
        p999=percentile(ordered, 99.9),
        max=ordered[-1],
    )


# --------------------------------------------------------------------------- /proc


@dataclass
class ProcSnapshot:
    """CPU seconds and memory of a process tree at one instant."""

    pids: list[int]
    cpu_s: float
    rss_bytes: int
    hwm_bytes: int  # sum of VmHWM (peak RSS since start, or since the last reset)


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (read once from /proc)."""
    children = _children_map()
    tree, stack = [], [pid]
    while stack:
        current = stack.pop()
        tree.append(current)
        stack.extend(children.get(current, []))
    return tree


def _cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime + stime


def memory(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in bytes; zeros when the process is gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith(b"VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, hwm


def _rss_fast(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as handle:
            return int(handle.read().split()[1]) * _PAGE
    except OSError:
        return 0


def reset_peak(pids: Iterable[int]) -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > /proc/PID/clear_refs``); False where refused."""
    ok = True
    for pid in pids:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as handle:
                handle.write("5")
        except OSError:
            ok = False
    return ok


def system_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores (/proc/stat)."""
    try:
        with open("/proc/stat", "rb") as handle:
            fields = [int(x) for x in handle.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user
    return (total - idle) / _CLK_TCK, total / _CLK_TCK


def snapshot(pids: Sequence[int]) -> ProcSnapshot:
    cpu = sum(_cpu_seconds(pid) for pid in pids)
    rss = hwm = 0
    for pid in pids:
        r, h = memory(pid)
        rss += r
        hwm += h
    return ProcSnapshot(list(pids), cpu, rss, hwm)


# --------------------------------------------------------------------------- HTTP client


class _Record:
    """One request: when it was due, issued, answered, and how."""

    __slots__ = ("done", "due", "error", "issued", "nbytes", "status")

    def __init__(self, due: float) -> None:
        self.due = due
        self.issued = 0.0
        self.done = 0.0
        self.status = 0
        self.nbytes = 0
        self.error = ""


class _Conn(asyncio.Protocol):
    """One keep-alive connection: one request at a time, answers parsed as they arrive."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.record: _Record | None = None
        self.on_done: Callable[[_Record], None] | None = None
        self.closed = False
        self._reset_parse()

    def _reset_parse(self) -> None:
        self.body_start = -1
        self.status = 0
        self.length = -1
        self.chunked = False
        self.close_after = False
        self.chunk_pos = 0
        self.body_len = 0

    # ----- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self.buf += data
        if self.record is not None:
            self._parse(now)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.record is None:
            return
        now = time.perf_counter()
        if exc is None and self.body_start >= 0 and not self.chunked and self.length < 0:
            self.body_len = len(self.buf) - self.body_start  # a body delimited by the close
            self._finish(now)
        else:
            self._finish(now, error=f"connection lost: {exc or 'closed by server'}")

    # ----- one exchange

    def send(self, payload: bytes, record: _Record, on_done: Callable[[_Record], None]) -> None:
        assert self.transport is not None
        self.record = record
        self.on_done = on_done
        self._reset_parse()
        self.buf.clear()
        record.issued = record.issued or time.perf_counter()
        self.transport.write(payload)

    def _parse(self, now: float) -> None:
        buf = self.buf
        if self.body_start < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            try:
                self.status = int(parts[1])
            except (IndexError, ValueError):
                self._finish(now, error=f"bad status line {lines[0]!r}", close=True)
                return
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    self.length = int(value)
                elif name == "transfer-encoding" and "chunked" in value.lower():
                    self.chunked = True
                elif name == "connection" and "close" in value.lower():
                    self.close_after = True
            self.body_start = end + 4
            self.chunk_pos = self.body_start
        if self.chunked:
            self._parse_chunks(now)
        elif self.length >= 0 and len(buf) - self.body_start >= self.length:
            self.body_len = self.length
            self._finish(now)
        # neither: the body ends when the server closes (handled in connection_lost)

    def _parse_chunks(self, now: float) -> None:
        buf = self.buf
        while True:
            line_end = buf.find(b"\r\n", self.chunk_pos)
            if line_end < 0:
                return
            size = int(bytes(buf[self.chunk_pos : line_end]).split(b";")[0], 16)
            if size == 0:
                if buf.find(b"\r\n\r\n", line_end) < 0 and not buf.endswith(b"\r\n"):
                    return
                self._finish(now)
                return
            if len(buf) < line_end + 2 + size + 2:
                return
            self.body_len += size
            self.chunk_pos = line_end + 2 + size + 2

    def _finish(self, now: float, error: str = "", close: bool = False) -> None:
        record, on_done = self.record, self.on_done
        self.record = self.on_done = None
        if record is None or on_done is None:
            return
        record.done = now
        record.status = self.status
        record.nbytes = self.body_len
        if not error and self.pool.expect is not None and self.status == 200 and self.pool.expect not in self.buf:
            error = "answer without the expected marker"
        record.error = error
        if close or self.close_after or error:
            if self.transport is not None and not self.closed:
                self.transport.close()
            self.closed = True
            self.pool.forget(self)
        else:
            self.pool.release(self)
        on_done(record)


class _Pool:
    """Keep-alive connections to one host:port, most recently used first, at most
    `max_connections`; beyond that, requests wait here for the first connection free."""

    def __init__(self, host: str, port: int, expect: bytes | None, max_connections: int = 512) -> None:
        self.host = host
        self.port = port
        self.expect = expect
        self.max_connections = max_connections
        self.idle: list[_Conn] = []
        self.all: set[_Conn] = set()
        self.waiting: deque[tuple[_Record, bytes, Callable[[_Record], None]]] = deque()
        self.connecting = 0
        self.opened = 0
        self.tasks: set[asyncio.Task[None]] = set()

    async def connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: _Conn(self), self.host, self.port)
        self.all.add(conn)
        self.opened += 1
        return conn

    def submit(self, record: _Record, payload: bytes, on_done: Callable[[_Record], None]) -> None:
        """Send on an idle connection, else on a new one, else when one is free."""
        if self.idle:
            self.idle.pop().send(payload, record, on_done)
        elif len(self.all) + self.connecting < self.max_connections:
            self._open(record, payload, on_done)
        else:
            self.waiting.append((record, payload, on_done))

    def _open(self, record: _Record, payload: bytes, on_done: Callable[[_Record], None]) -> None:
        self.connecting += 1
        task = asyncio.get_running_loop().create_task(self._open_and_send(record, payload, on_done))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _open_and_send(self, record: _Record, payload: bytes, on_done: Callable[[_Record], None]) -> None:
        try:
            conn = await self.connect()
        except OSError as exc:
            record.done = time.perf_counter()
            record.error = f"connect: {exc.__class__.__name__}"
            on_done(record)
            return
        finally:
            self.connecting -= 1
        conn.send(payload, record, on_done)

    def release(self, conn: _Conn) -> None:
        if conn.closed:
            return
        if self.waiting:
            record, payload, on_done = self.waiting.popleft()
            conn.send(payload, record, on_done)
        else:
            self.idle.append(conn)

    def forget(self, conn: _Conn) -> None:
        self.all.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        if self.waiting and len(self.all) + self.connecting < self.max_connections:
            self._open(*self.waiting.popleft())

    async def prewarm(self, count: int) -> None:
        count = min(count, self.max_connections) - len(self.idle)
        conns = await asyncio.gather(*(self.connect() for _ in range(max(0, count))))
        self.idle.extend(conns)

    def close(self) -> None:
        self.waiting.clear()
        for conn in list(self.all):
            conn.closed = True
            if conn.transport is not None:
                conn.transport.close()
        self.all.clear()
        self.idle.clear()


def encode_request(url: str, body: bytes, headers: dict[str, str] | None = None, method: str = "POST") -> bytes:
    """The request's bytes on the wire (HTTP/1.1, keep-alive)."""
    parts = urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    lines = [f"{method} {path} HTTP/1.1", f"Host: {parts.netloc}", "User-Agent: bench-loadgen"]
    merged = {"Content-Type": "application/json", **(headers or {})}
    lines += [f"{name}: {value}" for name, value in merged.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# --------------------------------------------------------------------------- phases


def _proc_delta(
    before: ProcSnapshot, after: ProcSnapshot, samples: list[int], reset: bool, window: float, answered: int
) -> ProcUse:
    """CPU and memory of one watched process tree over the window."""
    cpu = after.cpu_s - before.cpu_s
    sampled = max(samples) if samples else after.rss_bytes
    peak = max(after.hwm_bytes if reset else 0, sampled, after.rss_bytes)
    return ProcUse(
        pids=before.pids,
        cpu_s=cpu,
        cpu_ms_per_request=cpu * 1000.0 / max(1, answered),
        cpu_util=cpu / window if window > 0 else math.nan,
        rss_before=before.rss_bytes,
        rss_after=after.rss_bytes,
        hwm_after=after.hwm_bytes,
        hwm_reset=reset,
        rss_peak_sampled=sampled,
        rss_peak=peak,
        rss_growth_peak=peak - before.rss_bytes,
    )


class _Runner:
    def __init__(self, spec: PhaseSpec) -> None:
        parts = urlsplit(spec.url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"only http:// URLs: {spec.url}")
        self.spec = spec
        self.payload = encode_request(spec.url, spec.body.encode(), spec.headers)
        expect = spec.expect.encode() if spec.expect else None
        self.pool = _Pool(parts.hostname, parts.port or 80, expect, spec.max_connections)
        self.records: list[_Record] = []
        self.outstanding = 0
        self.max_in_flight = 0
        self.drained: asyncio.Event | None = None
        self.sending_done = False
        self.waiters: dict[_Record, asyncio.Future[_Record]] = {}

    # ----- dispatch

    def _on_done(self, record: _Record) -> None:
        self.outstanding -= 1
        waiter = self.waiters.pop(record, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(record)
        if self.sending_done and self.outstanding == 0 and self.drained is not None:
            self.drained.set()

    def issue(self, record: _Record) -> None:
        record.issued = time.perf_counter()
        self.outstanding += 1
        self.max_in_flight = max(self.max_in_flight, self.outstanding)
        self.pool.submit(record, self.payload, self._on_done)

    async def one(self) -> _Record:
        record = _Record(time.perf_counter())
        future: asyncio.Future[_Record] = asyncio.get_running_loop().create_future()
        self.waiters[record] = future
        self.issue(record)
        return await future

    # ----- the phase

    async def warmup(self) -> None:
        spec = self.spec
        await self.pool.prewarm(spec.connections)
        left = spec.warmup_requests

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await self.one()

        await asyncio.gather(*(worker() for _ in range(max(1, spec.warmup_concurrency))))

    async def run_open(self) -> None:
        spec = self.spec
        total = max(1, round(spec.rate * spec.duration))
        interval = 1.0 / spec.rate
        start = time.perf_counter() + 0.002
        for i in range(total):
            due = start + i * interval
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            record = _Record(due)
            self.records.append(record)
            self.issue(record)

    async def run_closed(self) -> None:
        spec = self.spec
        left = spec.requests if spec.requests > 0 else -1  # -1: until `duration` has passed
        deadline = time.perf_counter() + spec.duration

        async def worker() -> None:
            nonlocal left
            while left != 0 and (left > 0 or time.perf_counter() < deadline):
                left = max(0, left - 1) if left > 0 else left
                record = await self.one()
                self.records.append(record)

        await asyncio.gather(*(worker() for _ in range(max(1, spec.concurrency))))

    async def run(self) -> PhaseResult:
        spec = self.spec
        self.drained = asyncio.Event()
        await self.warmup()
        await asyncio.sleep(0.05)
        trees = {name: process_tree(pid) for name, pid in spec.watch.items()}
        resets = {name: reset_peak(pids) for name, pids in trees.items()}
        before = {name: snapshot(pids) for name, pids in trees.items()}
        samples: dict[str, list[int]] = {name: [] for name in trees}
        sampler = asyncio.get_running_loop().create_task(self._sample(trees, samples)) if trees else None
        sys0 = system_cpu()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        if spec.mode == "open":
            await self.run_open()
        elif spec.mode == "closed":
            await self.run_closed()
        else:
            raise ValueError(f"unknown mode {spec.mode!r}")
        t_sent = time.perf_counter()
        self.sending_done = True
        if self.outstanding:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.drained.wait(), spec.drain_s)
        t1 = time.perf_counter()
        after = {name: snapshot(pids) for name, pids in trees.items()}
        loadgen_cpu = time.process_time() - cpu0
        sys1 = system_cpu()
        if sampler is not None:
            sampler.cancel()
        timeouts = self.outstanding
        self.pool.close()
        window = t1 - t0
        answered = sum(1 for record in self.records if record.done)
        proc = {
            name: _proc_delta(before[name], after[name], samples[name], resets[name], window, answered)
            for name in trees
        }
        busy = (sys1[0] - sys0[0]) / window if window > 0 else math.nan
        system = SystemUse(busy_cores=busy, cores=os.cpu_count() or 1, loadavg_1m=os.getloadavg()[0])
        return self._result(t0, t_sent, t1, loadgen_cpu, timeouts, proc, system)

    async def _sample(self, trees: dict[str, list[int]], samples: dict[str, list[int]]) -> None:
        while True:
            for name, pids in trees.items():
                samples[name].append(sum(_rss_fast(pid) for pid in pids))
            await asyncio.sleep(self.spec.sample_interval_s)

    def _result(
        self,
        t0: float,
        t_sent: float,
        t1: float,
        loadgen_cpu: float,
        timeouts: int,
        proc: dict[str, ProcUse],
        system: SystemUse,
    ) -> PhaseResult:
        spec = self.spec
        errors: dict[str, int] = {}
        latencies: list[float] = []
        lags: list[float] = []
        ok_bytes = 0
        answered = 0
        for record in self.records:
            if record.done == 0.0:
                continue  # still outstanding: counted as timeouts below
            answered += 1
            if record.error:
                key = record.error
            elif record.status != 200:
                key = f"HTTP {record.status}"
            else:
                key = ""
            if key:
                errors[key] = errors.get(key, 0) + 1
                continue
            latencies.append((record.done - record.issued) * 1000.0)
            lags.append(max(0.0, record.issued - record.due) * 1000.0)
            ok_bytes += record.nbytes
        if timeouts:
            errors[f"no answer within {spec.drain_s:g}s of the last send"] = timeouts
        window = t1 - t0
        sent = len(self.records)
        return PhaseResult(
            spec=msgspec.structs.replace(spec, body="", headers={}),  # the headers hold keys
            sent=sent,
            ok=len(latencies),
            errors=errors,
            window_s=window,
            send_window_s=t_sent - t0,
            offered_rate=spec.rate if spec.mode == "open" else sent / window if window > 0 else math.nan,
            achieved_rate=answered / window if window > 0 else math.nan,
            latency_ms=summarize(latencies),
            lag_ms=summarize(lags),
            answer_bytes=ok_bytes / len(latencies) if latencies else 0.0,
            connections_opened=self.pool.opened,
            loadgen_cpu_s=loadgen_cpu,
            max_in_flight=self.max_in_flight,
            proc=proc,
            system=system,
            latencies_ms=[round(x, 4) for x in latencies] if spec.keep_latencies else [],
        )


async def run_phase(spec: PhaseSpec) -> PhaseResult:
    """Warm up, then run the phase and measure it."""
    return await _Runner(spec).run()


# --------------------------------------------------------------------------- CLI


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", help="the phase as JSON (default: read from stdin unless --url is given)")
    parser.add_argument("--url", help="target URL (http:// only)")
    parser.add_argument("--body", default="{}", help="request body (JSON text)")
    parser.add_argument("--header", action="append", default=[], help="NAME: VALUE (repeatable)")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second (open loop)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of sending")
    parser.add_argument("--closed", type=int, default=0, metavar="C", help="closed loop with C clients instead")
    parser.add_argument("--requests", type=int, default=0, help="requests in all (closed loop; 0: for --duration)")
    parser.add_argument("--watch", action="append", default=[], help="NAME=PID of a server to measure (repeatable)")
    parser.add_argument("--latencies", action="store_true", help="include every latency in the JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.url:
        headers = dict(h.split(":", 1) for h in args.header)
        spec = PhaseSpec(
            url=args.url,
            body=args.body,
            headers={k.strip(): v.strip() for k, v in headers.items()},
            mode="closed" if args.closed else "open",
            rate=args.rate,
            duration=args.duration,
            concurrency=args.closed or 1,
            requests=args.requests,
            watch={name: int(pid) for name, _, pid in (w.partition("=") for w in args.watch)},
            keep_latencies=args.latencies,
        )
    else:
        spec = loads(args.spec if args.spec else sys.stdin.read(), PhaseSpec)
    result = asyncio.run(run_phase(spec))
    sys.stdout.write(dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
