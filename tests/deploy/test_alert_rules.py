"""The shipped alert rules run by Prometheus's own `promtool`: checked, and unit-tested on series (alerts_test.yml).

`promtool` comes with Debian's `prometheus` package (`make test` installs it when run as root);
without it these tests fail and say so.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from soak.rules import SHIPPED, soak_rules

TESTS = Path(__file__).with_name("alerts_test.yml")


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "these tests need Prometheus's `promtool` (apt-get install prometheus; `make test` does it as root)"
    return found


def test_the_shipped_rules_pass_promtool_check() -> None:
    checked = subprocess.run([promtool(), "check", "rules", str(SHIPPED)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_fires_when_it_should_and_not_before() -> None:
    tested = subprocess.run(
        [promtool(), "test", "rules", TESTS.name], cwd=TESTS.parent, capture_output=True, text=True, timeout=120
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_shipped_alert_has_a_unit_test() -> None:
    shipped = {rule["alert"] for group in yaml.safe_load(SHIPPED.read_text())["groups"] for rule in group["rules"]}
    tests = yaml.safe_load(TESTS.read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert shipped == tested


def test_the_soak_rules_are_the_shipped_ones_with_shorter_durations(tmp_path: Path) -> None:
    shipped = yaml.safe_load(SHIPPED.read_text())["groups"][0]["rules"]
    derived = soak_rules(for_s=5, window_s=20)["groups"][0]["rules"]
    assert [r["alert"] for r in derived] == [r["alert"] for r in shipped]
    for mine, theirs in zip(derived, shipped, strict=True):
        assert mine["labels"] == theirs["labels"] and mine["annotations"] == theirs["annotations"]
        assert ("for" in mine) == ("for" in theirs) and mine.get("for", "5s") == "5s"
        assert "m]" not in mine["expr"]
    path = tmp_path / "soak.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "soak", "rules": derived}]}))
    checked = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
