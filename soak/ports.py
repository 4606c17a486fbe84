"""Loopback ports for the processes started on this machine: the soak's parts, and the tests' servers
(tests/servers.py, tests/seaweedfs.py import them from here; nothing here imports the tests)."""

from __future__ import annotations

import random
import socket

__all__ = ["consecutive_ports", "free_ports"]

# Below the kernel's ephemeral range (32768 and up on Linux): no port another process asks the kernel
# for, and no outgoing connection, lands in a run picked here.
RUN_LOW, RUN_HIGH = 20000, 30000


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports nobody listens on (at the moment of asking)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def consecutive_ports(count: int) -> int:
    """The first of ``count`` consecutive loopback ports nobody listens on, between 20000 and 30000
    (below the ephemeral range: see ``RUN_LOW``)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(RUN_LOW, RUN_HIGH - count)
        sockets = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free loopback ports between {RUN_LOW} and {RUN_HIGH}")
