"""Large buffers leave the process when freed (gateway/memory.py), on this machine's glibc."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
from gateway.memory import return_large_buffers

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

fixed = return_large_buffers() if sys.argv[1] == "fixed" else None
big = bytearray(16 << 20); del big  # freeing a large mapped block raises glibc's own threshold
before = rss_mib()
answer = bytearray(b"x" * (8 << 20))  # an answer's worth, every page touched
del answer
print(json.dumps({"fixed": fixed, "kept_mib": rss_mib() - before}))
"""


def probe(mode: str) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_freed_answer_buffers_are_returned_to_the_os() -> None:
    fixed = probe("fixed")
    assert fixed["fixed"] is True, "mallopt was not available: this machine's libc is not glibc"
    assert fixed["kept_mib"] < 2, fixed
    # Without it, glibc keeps the freed 8 MiB for reuse: the difference the gateway's setting makes.
    assert probe("default")["kept_mib"] > 6
