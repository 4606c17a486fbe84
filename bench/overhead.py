"""The local engine's serving overhead against the bare loop, measured in pairs on a noisy machine.

    python -m bench.overhead [--size 64] [--rounds 9] [--images 16]

``make bench-local`` times the bare loop and the engine minutes apart, so on a shared machine
whose speed moves by 2-7x between minutes its overhead moves by tens of points. Here each round
times ``--images`` images through the bare loop and the same through the engine back to back
(their order alternating), at concurrency 1 (the bare loop in calls of one image) and 16 (in calls
of ``max_batch_size``, against 16 clients of the engine); the overhead of a round is the engine's
seconds over the bare loop's, less one, and the figure is the median round. The tiny SD model on
the CPU, as ``make bench-local``'s CPU part. Each figure is given by the clock and by the
process's CPU time (all its threads), which the machine's other processes disturb far less:
what the engine adds is CPU work (the queue, the hand-over between threads, PNG encoding).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

import msgspec

from bench.local import Setup, bare_loop, cpu_setup, through_engine

__all__ = ["main", "paired"]


async def paired(setup: Setup, rounds: int, concurrency: int) -> tuple[list[float], list[float]]:
    """Each round's overhead in percent, by the clock and by this process's CPU time.

    By the clock: the engine's seconds for ``setup.images`` over the bare loop's, less one. By CPU time
    (every thread of the process: the device thread, the event loop, the PNG encoders): the same
    ratio of ``time.process_time()``, which other processes on the machine disturb far less.
    """
    from local_backend.engine import LocalEngine
    from schemas.local import LocalBackendSettings

    raw = {
        "kind": "local",
        "device": setup.device,
        "queue_size": 256,
        "max_batch_size": setup.max_batch_size,
        "batch_window_ms": setup.batch_window_ms,
        "models": {"bench": {"path": setup.path, "default_steps": setup.steps, "max_pixels": setup.size**2}},
    }
    engine = LocalEngine(msgspec.convert(raw, LocalBackendSettings), name="bench")
    await engine.start()
    batch = 1 if concurrency == 1 else setup.max_batch_size
    try:
        model = engine.models["bench"]
        warm = msgspec.structs.replace(setup, images=batch)
        await engine.run_on_device(bare_loop, model, warm, batch)
        await through_engine(engine, warm, concurrency)
        wall, cpu = [], []
        for index in range(rounds):
            seconds, busy = {}, {}
            for path in ("bare", "engine") if index % 2 == 0 else ("engine", "bare"):
                started, used = time.perf_counter(), time.process_time()
                if path == "bare":
                    await engine.run_on_device(bare_loop, model, setup, batch)
                else:
                    await through_engine(engine, setup, concurrency)
                seconds[path], busy[path] = time.perf_counter() - started, time.process_time() - used
            wall.append(100 * (seconds["engine"] / seconds["bare"] - 1))
            cpu.append(100 * (busy["engine"] / busy["bare"] - 1))
    finally:
        await engine.aclose()
    return wall, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--rounds", type=int, default=9, help="pairs per concurrency (default 9)")
    parser.add_argument("--images", type=int, default=16, help="images per side of a pair (default 16)")
    args = parser.parse_args(argv)
    setup = cpu_setup(args.images, args.size)
    print(f"{args.size} px, {args.images} images a side, {args.rounds} rounds; load {os.getloadavg()[0]:.1f}")
    for concurrency in (1, 16):
        for clock, overheads in zip(("wall", "cpu"), asyncio.run(paired(setup, args.rounds, concurrency)), strict=True):
            quartiles = statistics.quantiles(overheads, n=4)
            print(f"concurrency {concurrency}, {clock}: median {statistics.median(overheads):+.1f} % "
                  f"(quartiles {quartiles[0]:+.1f} % to {quartiles[2]:+.1f} %; rounds: "
                  + ", ".join(f"{value:+.0f}" for value in overheads) + ")")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
