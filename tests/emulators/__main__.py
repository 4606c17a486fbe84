"""Run emulators in the foreground.

python -m tests.emulators melious --port 9101 [--api-key K]
python -m tests.emulators all --base-port 9101   # melious, nebul, pomelo, nebulablock, openai on 9101..9105
python -m tests.emulators melious --port 0 --noise --no-call-log   # heavy answers, no call log (benchmarks)
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from . import DEFAULT_API_KEY, EMULATORS, EmulatorServer, create_emulator

DEFAULT_BASE_PORT = 9101


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.emulators", description="Run provider emulators.")
    parser.add_argument("kind", choices=[*EMULATORS, "all"], help="which provider to emulate, or all of them")
    parser.add_argument(
        "--port", type=int, default=None, help="port for one emulator (default: its place after --base-port)"
    )
    parser.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT, help="first port for `all` (default 9101)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY, help="bearer key to require (default %(default)s)")
    parser.add_argument("--log-level", default="warning", help="uvicorn log level (default warning)")
    parser.add_argument(
        "--noise", action="store_true", help="answer random-pixel PNGs (incompressible, ~3 MB at 1024x1024)"
    )
    parser.add_argument(
        "--no-call-log", action="store_true", help="keep no call log (GET /_emulator/calls stays empty)"
    )
    return parser.parse_args(argv)


def _plan(args: argparse.Namespace) -> list[tuple[str, int]]:
    """(kind, port) for every emulator to run."""
    kinds = list(EMULATORS)
    if args.kind == "all":
        return [(kind, args.base_port + i) for i, kind in enumerate(kinds)]
    port = args.port if args.port is not None else args.base_port + kinds.index(args.kind)
    return [(args.kind, port)]


def main(argv: list[str] | None = None) -> int:
    """Start the emulators, print where they listen, and serve until SIGINT/SIGTERM."""
    args = _parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    servers: list[EmulatorServer] = []
    try:
        for kind, port in _plan(args):
            emulator = create_emulator(kind, args.api_key, noise=args.noise, record_calls=not args.no_call_log)
            server = EmulatorServer(emulator, args.host, port, args.log_level).start()
            servers.append(server)
            print(f"{kind} emulator listening on {server.base_url}", flush=True)
        stop.wait()  # until SIGINT or SIGTERM (the handlers run in this thread while it waits)
    finally:
        for server in servers:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
