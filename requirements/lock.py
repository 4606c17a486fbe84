"""`make lock`: re-resolve every lock file in requirements/ to the newest versions the project allows.

The lock files are what every install reads (the Makefile installs them with ``--require-hashes --no-deps``),
so a fresh machine gets exactly what CI passed with. This script is the only writer:

- ``bench.txt``: the package with its ``local``, ``fp8``, ``dev`` and ``bench`` extras (resolved first: the widest set);
- ``test.txt``: ``local``, ``fp8`` and ``dev`` (``make test``), ``serve.txt``: ``local`` (``make run``),
  ``gateway.txt``: the package alone (a gateway-only replica) — each held to bench.txt's versions, so the four agree;
- ``litellm-proxy.txt``: LiteLLM's proxy (``make bench``), and ``litellm.txt``: its SDK alone (the suite), held to
  the proxy's versions; both go in one virtualenv of their own (LiteLLM pins versions of its own).

It prints each package whose version moved. Run it when dependencies should move (``make lock``), or with
``--keep`` (``make lock KEEP=1``) when a dependency was added or removed and nothing else should move; then
``make test``, and commit requirements/ with the change.
"""

from __future__ import annotations

import re
import subprocess
import sys
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TOOLS = ROOT / ".venv-lock"
PIP_TOOLS = "pip-tools==7.7.0"
FLAGS = [
    "--quiet",
    "--allow-unsafe",  # setuptools too: the editable install builds without isolation, from the lock
    "--generate-hashes",
    "--strip-extras",
    "--no-emit-index-url",  # the machine's pip.conf says where packages come from, the lock says which
    "--no-emit-find-links",
]
# (output, extras, the lock it is held to, source)
LOCKS: list[tuple[str, list[str], str | bool, str]] = [
    ("bench.txt", ["local", "fp8", "dev", "bench"], False, "pyproject.toml"),
    ("test.txt", ["local", "fp8", "dev"], "bench.txt", "pyproject.toml"),
    ("serve.txt", ["local"], "bench.txt", "pyproject.toml"),
    ("gateway.txt", [], "bench.txt", "pyproject.toml"),
    ("litellm-proxy.txt", [], False, "requirements/litellm-proxy.in"),
    ("litellm.txt", [], "litellm-proxy.txt", "requirements/litellm.in"),
]
_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s\\]+)", re.M)


def pins(path: Path) -> dict[str, str]:
    return dict(_PIN.findall(path.read_text())) if path.exists() else {}


def main() -> int:
    # `make lock`: everything to the newest allowed. `make lock KEEP=1` (--keep): only what pyproject.toml's change
    # needs (a dependency added or removed), every other version kept.
    upgrade = [] if "--keep" in sys.argv[1:] else ["--upgrade"]
    compile_ = TOOLS / "bin" / "pip-compile"
    if not compile_.exists():
        venv.create(TOOLS, with_pip=True)
        subprocess.run([str(TOOLS / "bin" / "pip"), "install", "--quiet", PIP_TOOLS], check=True)
    changed = 0
    for name, extras, constrained, source in LOCKS:
        out = HERE / name
        before = pins(out)
        command = [str(compile_), *FLAGS, *upgrade, "-o", str(out.relative_to(ROOT)), source]
        if source == "pyproject.toml":
            command.append("--all-build-deps")
        command += [f"--extra={extra}" for extra in extras]
        if constrained:
            command += ["-c", f"requirements/{constrained}"]
        subprocess.run(command, check=True, cwd=ROOT)
        after = pins(out)
        for package in sorted(before.keys() | after.keys()):
            old, new = before.get(package), after.get(package)
            if old != new:
                changed += 1
                print(f"{name}: {package} {old or '(new)'} -> {new or '(removed)'}")
    print(f"{changed} change(s)" if changed else "nothing moved")
    return 0


if __name__ == "__main__":
    sys.exit(main())
