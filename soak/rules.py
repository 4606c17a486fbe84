"""The soak's alert rules: deploy/prometheus/alerts.yml with its durations shortened, nothing else changed.

A soak lasts minutes, the shipped rules wait up to 15 minutes (``for: 15m``) over windows of up to
10 minutes (``[10m]``). The soak's copy keeps every rule's name, expression and threshold and replaces
each ``for:`` by ``FOR`` and each range window by ``WINDOW`` (both chosen by the run's length), so
that an alert a fault should raise fires and resolves within the run. Which alerts each fault is
expected to raise is ``EXPECTED`` in soak/faults.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

SHIPPED = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "alerts.yml"
_RANGE = re.compile(r"\[(\d+)([smhd])\]")


def soak_rules(for_s: int, window_s: int) -> dict[str, Any]:
    """The shipped groups with every ``for`` set to ``for_s`` seconds and every range window to ``window_s``."""
    rules: dict[str, Any] = yaml.safe_load(SHIPPED.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["expr"] = _RANGE.sub(f"[{window_s}s]", rule["expr"])
            if "for" in rule:
                rule["for"] = f"{for_s}s"
    return rules


def write_soak_rules(path: Path, for_s: int, window_s: int) -> Path:
    header = (
        "# Derived from deploy/prometheus/alerts.yml by soak/rules.py for `make soak`: every `for:` is "
        f"{for_s}s and every range window [{window_s}s]; names, expressions and thresholds as shipped.\n"
    )
    path.write_text(header + yaml.safe_dump(soak_rules(for_s, window_s), sort_keys=False))
    return path
