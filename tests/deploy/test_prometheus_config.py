"""deploy/prometheus: promtool accepts the config and rules, the rules' unit tests pass, and every alert is
documented, tested both ways, and asks only for contract metrics."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.promql import (
    DEPLOY,
    RULES_FILE,
    SYNTHETIC,
    THRESHOLD,
    alert_expressions,
    alert_rules,
    contract_name,
    contract_names,
    metric_names,
)

PROMETHEUS_DIR = DEPLOY / "prometheus"
REQUIRED_ALERTS = {
    "HighResponseTime",
    "HighErrorRate",
    "ModelLoadingFailures",
    "QueueSaturated",
    "SlowTimeToFirstToken",
    "DeviceMemoryCritical",
    "ServiceDown",
}


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    command = shutil.which("promtool") or "/usr/bin/promtool"
    return subprocess.run([command, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_promtool_checks_the_scrape_config_and_the_rules_it_loads() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", "rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = promtool("test", "rules", "rules.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    """The unit tests are not vacuous: a rule with the wrong threshold fails them."""
    broken = RULES_FILE.read_text().replace("device_memory_pressure) == 2", "device_memory_pressure) == 1")
    assert broken != RULES_FILE.read_text()
    (tmp_path / "rules.yml").write_text(broken)
    shutil.copy(PROMETHEUS_DIR / "rules.test.yml", tmp_path)
    result = promtool("test", "rules", "rules.test.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "DeviceMemoryCritical" in result.stdout + result.stderr


def test_the_scrape_config_scrapes_the_metrics_path_as_job_inference_api() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "inference-api"]
    assert job["metrics_path"] == "/prometheus"
    assert config["rule_files"] == ["rules.yml"]


def test_every_required_alert_is_there_with_severity_and_annotations() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert set(rules) == REQUIRED_ALERTS
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert {"summary", "description", "action"} <= set(rule["annotations"]), name
        assert all(str(text).strip() for text in rule["annotations"].values()), name


def test_alert_expressions_end_in_one_threshold_and_use_contract_metrics() -> None:
    known = contract_names() | SYNTHETIC
    for name, expr in alert_expressions().items():
        assert THRESHOLD.search(expr), f"{name}: expr must end in '<op> <number>': {expr}"
        unknown = {series for series in metric_names(expr) if contract_name(series) not in known}
        assert not unknown, f"{name} uses metrics outside the contract: {sorted(unknown)}"


@pytest.mark.parametrize("alert", sorted(REQUIRED_ALERTS))
def test_each_alert_has_unit_tests_where_it_fires_and_where_it_does_not(alert: str) -> None:
    tests = yaml.safe_load((PROMETHEUS_DIR / "rules.test.yml").read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"] if case["alertname"] == alert]
    assert any(case["exp_alerts"] for case in cases), f"no case where {alert} fires"
    assert any(not case["exp_alerts"] for case in cases), f"no case where {alert} stays quiet"
    # Where it fires, the healthy series of the same test must not: exp_alerts lists every alert expected.
    firing = [t for t in tests if any(c["alertname"] == alert and c["exp_alerts"] for c in t["alert_rule_test"])]
    assert any(len(test["input_series"]) > 1 for test in firing), f"{alert} is never tested beside a healthy series"
