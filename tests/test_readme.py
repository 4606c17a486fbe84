"""The README as a newcomer follows it: its links stay inside the repository, its examples leave no files behind."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def test_links_and_named_docs_are_inside_the_repository() -> None:
    targets = re.findall(r"\]\(([^)#]+)", README) + re.findall(r"`((?:\.\./|docs/)[^`\s]+\.md)`", README)
    assert targets
    for target in targets:
        if "://" in target:
            continue
        path = (REPO / target).resolve()
        assert path.is_relative_to(REPO), f"README points outside the repository: {target}"
        assert path.exists(), f"README points at a missing file: {target}"


def test_examples_write_files_only_under_a_temporary_directory() -> None:
    """`curl -o FILE` in the examples writes under `$tmp` (made with mktemp -d), never into the checkout."""
    outputs = re.findall(r"curl [^\n]*?-o\s+(\S+)", README)
    assert outputs
    for output in outputs:
        assert output.strip("\"'").startswith("$tmp/"), output
    assert "tmp=$(mktemp -d)" in README
