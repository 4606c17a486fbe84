"""Instructions per light request, counted by valgrind's callgrind: a figure the shared machine's load does not move.

    python -m bench.instructions [--tree DIR ...] [--requests 300] [--warmup 100]

For this checkout and each ``--tree`` (another checkout, e.g. ``git worktree add /tmp/before <commit>``), a
gateway process runs under ``valgrind --tool=callgrind`` with the config of ``make bench`` (the same emulator,
inbound key and Redis rate limiting; the other checkout's packages first on ``PYTHONPATH``, this virtualenv).
After ``--warmup`` requests, the counters are zeroed (``callgrind_control -z``), ``--requests`` light requests
(``make bench``'s: n=1, ~8 KB answer) are sent one after another over one kept-alive connection, and the
counters are dumped (``callgrind_control -d``): their total over the requests is the process's instructions
per request, its event loop's share included. CPU time on a 2-core machine shared with other sessions moves by
more than a change does; this count moves by a few percent from run to run with the load (more or fewer
events a wake-up), and the ratio of two checkouts counted in the same run by about half a point: compare
checkouts within one run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.measure import ENDPOINT, request_body
from bench.stack import ROOT, StackOptions, check_redis, free_port, log, running_stack, start_service
from bench.tree import describe

__all__ = ["count", "main"]


def _send(port: int, headers: dict[str, str], body: bytes, requests: int) -> None:
    """``requests`` light requests one after another over one connection; each must be a 200 with images."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        for _ in range(requests):
            connection.request("POST", ENDPOINT, body=body, headers=headers)
            answer = connection.getresponse()
            data = answer.read()
            if answer.status != 200 or b'"b64_json"' not in data:
                raise RuntimeError(f"the gateway answered {answer.status}: {data[:300]!r}")
    finally:
        connection.close()


def _totals(dump: Path) -> int:
    """The ``totals:`` (or ``summary:``) line of a callgrind dump: instructions executed."""
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dump}")


def count(stack_workdir: Path, config: Path, key: str, tree: Path | None, requests: int, warmup: int) -> float:
    """Instructions per light request of the gateway in ``tree`` (None: this checkout)."""
    name = "callgrind-" + (tree.name if tree else "this")
    out = stack_workdir / f"{name}.out"
    port = free_port()
    command = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no", "--collect-jumps=no",
        sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port),
    ]  # fmt: skip
    env = {"PYTHONPATH": str(tree)} if tree else {}
    service = start_service(name, command, f"http://127.0.0.1:{port}", stack_workdir, env, cwd=tree)
    try:
        service.wait_ready("/ready", 900)
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        body = request_body(False, "gateway").encode()
        _send(port, headers, body, warmup)
        subprocess.run(["callgrind_control", "-z", str(service.pid)], check=True, capture_output=True)
        _send(port, headers, body, requests)
        before = set(stack_workdir.glob(f"{name}.out*"))
        subprocess.run(["callgrind_control", "-d", str(service.pid)], check=True, capture_output=True)
        deadline = time.monotonic() + 60
        while not (dumps := set(stack_workdir.glob(f"{name}.out*")) - before) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # the dump is written whole before callgrind_control returns, but be sure
        if not dumps:
            raise RuntimeError("callgrind wrote no dump")
        return _totals(max(dumps, key=lambda p: p.stat().st_mtime)) / requests
    finally:
        service.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", default=[], help="another checkout to count too (repeatable)")
    parser.add_argument("--requests", type=int, default=300, help="requests counted (default 300)")
    parser.add_argument("--warmup", type=int, default=100, help="requests before counting (default 100)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    check_redis(args.redis_url)
    trees = [None, *(Path(t).resolve() for t in args.tree)]
    results: dict[str, float] = {}
    with running_stack(StackOptions(redis_url=args.redis_url)) as stack:
        config = stack.workdir / "gateway.json"
        for tree in trees:
            label = describe(tree or ROOT)
            log(f"instructions: {label}: under callgrind (start-up takes a minute or two)")
            results[label] = count(stack.workdir, config, stack.gateway_key, tree, args.requests, args.warmup)
            log(f"instructions: {label}: {results[label] / 1e6:.3f} M per light request")
    first = next(iter(results.values()))
    for label, value in results.items():
        print(f"{value / 1e6:.3f} M instructions per light request ({value / first:.3f}x this checkout's): {label}")
    print(json.dumps({"requests": args.requests, "warmup": args.warmup, "per_request": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
