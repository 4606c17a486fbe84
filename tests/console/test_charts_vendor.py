"""The charting library shipped with the console: uPlot, vendored (no CDN), its version and licence beside it,
packaged with gateway.console, and the only outside code the page loads."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

from gateway.console.admin import CONSOLE_DIR, PAGE_HEADERS

VERSION = "1.6.32"
VENDOR = CONSOLE_DIR / "assets" / "vendor" / "uplot"
ROOT = Path(__file__).resolve().parents[2]


def test_uplot_is_vendored_with_its_version_and_licence() -> None:
    assert sorted(path.name for path in VENDOR.iterdir()) == [
        "LICENSE",
        "VERSION",
        "uPlot.iife.min.js",
        "uPlot.min.css",
    ]
    assert (
        (VENDOR / "uPlot.iife.min.js")
        .read_text(encoding="utf-8")
        .startswith(f"/*! https://github.com/leeoniya/uPlot (v{VERSION}) */")
    )
    assert "The MIT License (MIT)" in (VENDOR / "LICENSE").read_text(encoding="utf-8")
    note = (VENDOR / "VERSION").read_text(encoding="utf-8")
    assert f"uPlot {VERSION}" in note and f"npm pack uplot@{VERSION}" in note and "integrity sha512-" in note


def test_the_vendored_files_are_package_data() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"][
        "package-data"
    ]["gateway.console"]
    for path in VENDOR.iterdir():
        relative = path.relative_to(CONSOLE_DIR).as_posix()
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), relative


def test_the_page_loads_only_its_own_files() -> None:
    page = (CONSOLE_DIR / "index.html").read_text(encoding="utf-8")
    sources = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert "/console/assets/vendor/uplot/uPlot.iife.min.js" in sources
    assert "/console/assets/vendor/uplot/uPlot.min.css" in sources
    assert all(source.startswith(("/console/", "#")) for source in sources), sources
    assert "script-src 'self'" in PAGE_HEADERS["Content-Security-Policy"]  # uPlot needs nothing more
