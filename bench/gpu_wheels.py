"""The wheels ``make bench-gpu`` needs on a lent GPU machine, downloaded here into ``.whl/``.

    python -m bench.gpu_wheels [--dest .whl] [--python-version 3.12] [--dry-run]

The GPU machines this project is lent (DEVELOPERS.md, "Asking for a GPU") hold CUDA's torch,
transformers and the common packages, but not diffusers, msgspec, structlog or OpenTelemetry,
and reach no package registry. This finds what the bench imports (by importing it here),
leaves out what the machine's image holds (``DEVICE_IMAGE``) and torch, and downloads the rest
at the versions ``requirements/serve.txt`` pins, as binary wheels for CPython 3.12 on x86-64
Linux. diffusers, transformers, huggingface-hub and tokenizers always travel, so the bench runs
the versions the project is tested with. ``bench/gpu.sh`` installs them there (``--target``,
nothing else on the machine changes) when ``.whl`` is carried along.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

__all__ = ["main", "needed"]

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "serve.txt"
# What the lent machines' image ("cuda") already holds, as .library/device/KINDS.md lists it (and torch).
DEVICE_IMAGE = frozenset({
    "accelerate", "anyio", "attrs", "certifi", "charset-normalizer", "filelock", "fsspec", "h11", "hf-xet",
    "httpcore", "httpx", "idna", "jinja2", "markdown-it-py", "markupsafe", "mdurl", "mpmath", "networkx", "numpy",
    "nvidia-ml-py", "packaging", "psutil", "pygments", "pyyaml", "regex", "requests", "rich",
    "safetensors", "setuptools", "sniffio", "sympy", "torch", "tqdm", "typing-extensions", "urllib3",
})  # fmt: skip
# Carried even though the image has a version: the bench runs these at the versions the project is tested with
# (accelerate reads huggingface-hub; pillow encodes the engine's PNGs; protobuf: OpenTelemetry's generated code).
PINNED = frozenset({"accelerate", "diffusers", "huggingface-hub", "pillow", "protobuf", "tokenizers", "transformers"})
# What bench/gpu.py and its measuring process import (their imports of other modules are lazy).
IMPORTS = """
import bench.gpu, bench.published, local_backend.engine, local_backend.pipelines, local_backend.energy
from diffusers import FluxPipeline, StableDiffusionXLPipeline, FirstBlockCacheConfig
import torchao.quantization  # a model's `quantize: fp8` (imported lazily by the engine; diffusers imports it too)
from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel, CLIPTokenizer, T5Tokenizer
import sys, importlib.metadata as md
found = md.packages_distributions()
print("\\n".join(sorted({d for m in list(sys.modules) for d in found.get(m.split(".")[0], [])})))
"""
GLIBC_MINORS = (17, 24, 27, 28, 31, 34)  # pip matches manylinux_2_N exactly: the Ns wheels are tagged with
PLATFORMS = ("manylinux2014_x86_64", "manylinux1_x86_64", *(f"manylinux_2_{n}_x86_64" for n in GLIBC_MINORS))


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: Path = LOCK) -> dict[str, str]:
    """Each package the lock file pins, by normalized name: its version."""
    found = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", lock.read_text(encoding="utf-8"), re.MULTILINE)
    return {normalize(name): version for name, version in found}


def needed() -> list[str]:
    """``name==version`` of each package to carry: what the bench imports, less the image's, plus ``PINNED``."""
    imported = subprocess.run([sys.executable, "-c", IMPORTS], check=True, capture_output=True, text=True, cwd=ROOT)
    names = {normalize(name) for name in imported.stdout.split()} - {"image-gateway"}
    wanted = sorted((names - DEVICE_IMAGE) | PINNED)
    locked = pins()
    missing = sorted(PINNED - set(locked))
    if missing:
        raise SystemExit(f"not pinned in {LOCK.name}: {', '.join(missing)}")
    # What is imported here but not pinned for serving came with the test tools (greenlet): optional, left out.
    return [f"{name}=={locked[name]}" for name in wanted if name in locked]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_wheels", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", default=str(ROOT / ".whl"), help="where the wheels go (default .whl)")
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python (default 3.12)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be downloaded")
    args = parser.parse_args(argv)
    wanted = needed()
    print("\n".join(wanted))
    if args.dry_run:
        return 0
    platforms = [option for platform in PLATFORMS for option in ("--platform", platform)]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", args.python_version, "--implementation", "cp", *platforms,
               "--dest", args.dest, *wanted]  # fmt: skip
    subprocess.run(command, check=True)
    dest = Path(args.dest).resolve()
    if dest.is_relative_to(ROOT):
        _exclude(dest)
    size = sum(path.stat().st_size for path in dest.glob("*.whl")) / 2**20
    print(f"{args.dest}: {size:.0f} MiB of wheels (the device tool carries 64 MiB at most, the tree included)")
    return 0


def _exclude(dest: Path) -> None:
    """Name ``dest`` in git's info/exclude: never committed, carried to the GPU machine by ``carry``."""
    exclude = subprocess.run(["git", "rev-parse", "--git-path", "info/exclude"], capture_output=True, text=True,
                             cwd=ROOT, check=True).stdout.strip()  # fmt: skip
    exclude_file = ROOT / exclude
    entry = "/" + dest.relative_to(ROOT).as_posix() + "/"
    text = exclude_file.read_text(encoding="utf-8") if exclude_file.exists() else ""
    if entry not in text.split():
        with exclude_file.open("a", encoding="utf-8") as file:
            file.write(f"\n{entry}\n")


if __name__ == "__main__":
    raise SystemExit(main())
