"""The Prometheus rules pass promtool: syntax (check rules) and behaviour (unit tests on synthetic series)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import yaml

from tests.promtool import README, RULE_TESTS, RULES, run_promtool


def alert_rules() -> list[dict[str, object]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_rules_pass_promtool_check() -> None:
    result = run_promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_fires_and_stays_quiet_in_promtool_unit_tests() -> None:
    result = run_promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    cases = [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
             for case in test.get("alert_rule_test", [])]
    fired = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    names = {str(rule["alert"]) for rule in alert_rules()}
    assert names <= fired, f"alerts never shown firing: {sorted(names - fired)}"
    assert names <= quiet, f"alerts never shown quiet: {sorted(names - quiet)}"


def test_a_broken_rule_fails_the_unit_tests(tmp_path: Path) -> None:
    broken = RULES.read_text().replace("sender_results_buffered > 5000", "sender_results_buffered > 50000")
    assert broken != RULES.read_text()
    (tmp_path / "config" / "prometheus").mkdir(parents=True)
    (tmp_path / "tests" / "prometheus").mkdir(parents=True)
    (tmp_path / "config" / "prometheus" / RULES.name).write_text(broken)
    shutil.copy(RULE_TESTS, tmp_path / "tests" / "prometheus" / RULE_TESTS.name)
    result = run_promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path / "tests" / "prometheus")
    assert result.returncode != 0 and "SenderResultsPilingUp" in result.stdout + result.stderr


def test_every_alert_has_a_summary_and_a_runbook_section_in_the_readme() -> None:
    anchors = {_anchor(line.lstrip("#").strip()) for line in README.read_text().splitlines() if line.startswith("#")}
    for rule in alert_rules():
        annotations = rule["annotations"]
        assert isinstance(annotations, dict) and annotations.get("summary"), rule["alert"]
        runbook = str(annotations.get("runbook", ""))
        assert runbook.startswith("README.md#"), rule["alert"]
        assert runbook.removeprefix("README.md#") in anchors, f"{rule['alert']}: no README heading for {runbook}"


def _anchor(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
