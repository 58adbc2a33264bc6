"""promtool on the committed Prometheus files: config, alert rules, and the rules' unit tests."""

from __future__ import annotations

from typing import Any

PROMETHEUS_DIR = "deploy/prometheus"
ALERTS = {
    # what the deployment issue asks alerts for -> the rules that cover it
    "server down": {"RnnserveDown", "RnnserveTargetMissing"},
    "error ratio": {"RnnserveHighErrorRatio"},
    "p99 latency": {"RnnserveHighLatencyP99", "RnnserveSlowFirstToken"},
    "queue saturation": {"RnnserveRejectingWork", "RnnserveQueueBacklog"},
    "session evictions": {"RnnserveSessionEvictions"},
}


def test_promtool_check_config(deploy: Any) -> None:
    """The scrape config is valid and its rule file is found and valid."""
    promtool = deploy.find_tool("promtool")
    result = deploy.run([promtool, "check", "config", "prometheus.yml"],
                        cwd=deploy.ROOT / PROMETHEUS_DIR)
    assert result.returncode == 0, deploy.output(result)
    assert "1 rule files found" in result.stdout, deploy.output(result)


def test_promtool_check_rules(deploy: Any) -> None:
    promtool = deploy.find_tool("promtool")
    result = deploy.run([promtool, "check", "rules", "rules.yml"],
                        cwd=deploy.ROOT / PROMETHEUS_DIR)
    assert result.returncode == 0, deploy.output(result)


def test_promtool_test_rules(deploy: Any) -> None:
    """rules_test.yml: every alert fires on the series it is for and stays quiet otherwise."""
    promtool = deploy.find_tool("promtool")
    result = deploy.run([promtool, "test", "rules", "rules_test.yml"],
                        cwd=deploy.ROOT / PROMETHEUS_DIR)
    assert result.returncode == 0, deploy.output(result)
    assert "SUCCESS" in result.stdout, deploy.output(result)


def test_every_alert_is_unit_tested_and_the_required_ones_exist(deploy: Any) -> None:
    rules = deploy.load_yaml((deploy.ROOT / PROMETHEUS_DIR / "rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    for topic, names in ALERTS.items():
        assert names <= alerts, f"no alert for {topic}: {names - alerts}"
    tests = deploy.load_yaml((deploy.ROOT / PROMETHEUS_DIR / "rules_test.yml").read_text())
    tested = {case["alertname"] for t in tests["tests"] for case in t.get("alert_rule_test", [])}
    firing = {case["alertname"] for t in tests["tests"] for case in t.get("alert_rule_test", [])
              if case.get("exp_alerts")}
    assert alerts == tested, f"alerts without a unit test: {alerts - tested}"
    assert alerts == firing, f"alerts never shown to fire: {alerts - firing}"
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
                assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
