"""What a NebulaBlock edit's base64 input costs on its way to the NebulaBlock provider (issue 15).

Run: ``python -m bench.input_b64`` (CPU only, a few seconds). For one image of ``--mib`` MiB
(8 by default) as base64 text, the CPU microseconds (``time.process_time_ns``; median and
fastest of ``--repeats``) of:

- the image step: before, the text decoded (``b64decode(validate=True)``), sniffed and encoded
  again for the provider; now, checked without a decode (``schemas.dialect.b64_image``) and passed
  on (``InputImage.as_b64``);
- the whole request: the client's JSON body decoded into the canonical request, mapped to the
  provider's wire request and encoded, before (the same wire decode and encode, with the old image
  step) and now (the code as it is).

docs/benchmarks.md records the numbers.
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import time
from collections.abc import Callable

import msgspec

from schemas.dialect import b64_image, sniff_image
from schemas.nebulablock import SERVERLESS, NebulaBlockServerlessRequest

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_WIRE_DECODER = msgspec.json.Decoder(NebulaBlockServerlessRequest)


def _cpu_us(work: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median and fastest CPU microseconds of ``work``."""
    work()  # warm
    times = []
    for _ in range(repeats):
        started = time.process_time_ns()
        work()
        times.append((time.process_time_ns() - started) / 1000)
    return statistics.median(times), min(times)


def _old_image_step(text: str) -> str:
    """What the gateway did before: decode the whole text, sniff it, encode it again."""
    data = base64.b64decode(text, validate=True)
    if sniff_image(data) is None:
        raise ValueError("not an image")
    return base64.b64encode(data).decode("ascii")


def _new_image_step(text: str) -> str:
    return b64_image(text, "image").as_b64()


def _old_request(body: bytes) -> bytes:
    wire = _WIRE_DECODER.decode(body)
    assert wire.image is not None
    outbound = msgspec.structs.replace(wire, image=_old_image_step(wire.image))
    return msgspec.json.encode(outbound)


def _new_request(body: bytes) -> bytes:
    return msgspec.json.encode(SERVERLESS.from_canonical(SERVERLESS.decode_json(body)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=float, default=8.0, help="the image's size in MiB")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    data = PNG_SIGNATURE + os.urandom(int(args.mib * 1024 * 1024) - len(PNG_SIGNATURE))
    text = base64.b64encode(data).decode("ascii")
    body = msgspec.json.encode({"model": "m", "prompt": "p", "image": text})
    assert _old_request(body) == _new_request(body)  # the same wire request either way
    print(f"one {args.mib:g} MiB image ({len(text)} base64 characters), CPU µs, median / fastest of {args.repeats}:")
    for name, old, new in (
        ("image step", lambda: _old_image_step(text), lambda: _new_image_step(text)),
        ("whole request", lambda: _old_request(body), lambda: _new_request(body)),
    ):
        before, after = _cpu_us(old, args.repeats), _cpu_us(new, args.repeats)
        print(
            f"  {name:13s} before {before[0]:9.0f} / {before[1]:9.0f}   after {after[0]:9.0f} / {after[1]:9.0f}"
            f"   ({before[0] / after[0]:.1f}x less)"
        )


if __name__ == "__main__":
    main()
