"""The command-line options the side benchmarks (bench.servers, bench.portkey) share."""

from __future__ import annotations

import argparse

from bench.report import DOCS
from bench.stack import StackOptions

__all__ = ["add_common_arguments", "finish_arguments", "stack_options"]


def add_common_arguments(parser: argparse.ArgumentParser, rounds: int, duration: float) -> None:
    """The options every side benchmark shares."""
    add = parser.add_argument
    add("--duration", type=float, default=duration, help=f"seconds per phase (default {duration:g})")
    add("--rounds", type=int, default=rounds, help=f"interleaved rounds per rate (default {rounds})")
    add("--saturation-connections", type=int, default=32, help="closed-loop clients (default 32)")
    add("--emulator-delay-ms", type=float, default=1.0)
    add("--redis-url", default="redis://127.0.0.1:6379/0")
    add("--quick", action="store_true", help="short phases, docs untouched")
    add("--no-docs", action="store_true")
    add("--docs", default=str(DOCS))


def finish_arguments(args: argparse.Namespace) -> argparse.Namespace:
    """--quick shortens the phases and leaves the docs alone."""
    if args.quick:
        args.duration, args.rounds, args.no_docs = 1.0, 1, True
    return args


def stack_options(args: argparse.Namespace) -> StackOptions:
    """The servers of a side benchmark: the gateway without LiteLLM, on the aiohttp upstream client."""
    return StackOptions(redis_url=args.redis_url, emulator_delay_ms=args.emulator_delay_ms)
