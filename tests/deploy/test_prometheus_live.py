"""A real Prometheus, on the project's scrape config and rules, scraping a real server.

The ``prometheus`` fixture runs ``/usr/bin/prometheus`` on 127.0.0.1 (ephemeral port, temporary
storage) with deploy/prometheus/prometheus.yml rewritten only where it must be: the rnnserve
target points at the test server's metrics port and the intervals are 1 s. The ``traffic``
fixture sends known Generate/GenerateStream/Classify calls and waits until Prometheus reports
exactly the counts they make.
"""

from __future__ import annotations

from typing import Any


def test_metrics_endpoint_passes_promtool_check_metrics(
        live_server: Any, traffic: dict[str, float], deploy: Any) -> None:
    """The live exposition, with every metric family populated, follows the conventions."""
    promtool = deploy.find_tool("promtool")
    exposition = live_server.scrape()
    assert "rnnserve_requests_total{" in exposition
    result = deploy.run([promtool, "check", "metrics"], input=exposition)
    assert result.returncode == 0, deploy.output(result)
    assert not result.stdout.strip() and not result.stderr.strip(), deploy.output(result)


def test_target_is_up(prometheus: Any, traffic: dict[str, float]) -> None:
    targets = prometheus.api("targets")["activeTargets"]
    [rnnserve] = [t for t in targets if t["labels"]["job"] == "rnnserve"]
    assert rnnserve["health"] == "up", rnnserve
    assert rnnserve["lastError"] == ""
    assert prometheus.total('up{job="rnnserve"}') == 1


def test_request_counts_match_the_calls_made(prometheus: Any, traffic: dict[str, float],
                                             deploy: Any) -> None:
    """rnnserve_requests_total and friends, through Prometheus, equal what the test sent."""
    for key, (expr, _, _) in deploy.COUNTED.items():
        assert prometheus.total(expr) == traffic[key], key
    # labels carry the resolved default model, not an empty string
    models = {r["metric"]["model"] for r in prometheus.query(
        'rnnserve_requests_total{method=~"Generate|GenerateStream", code="OK"}')}
    assert models == {"timemachine"}


def test_gauges_show_models_and_sessions(prometheus: Any, traffic: dict[str, float],
                                         deploy: Any) -> None:
    ready = {r["metric"]["model"]: float(r["value"][1])
             for r in prometheus.query("rnnserve_model_ready")}
    assert ready == {"timemachine": 1.0, "sentiment": 1.0, "sine": 1.0}
    assert prometheus.total('rnnserve_sessions_active{model="timemachine"}') == deploy.MAX_SESSIONS
    assert prometheus.total('rnnserve_session_state_bytes{model="timemachine"}') > 0
    assert prometheus.total("rnnserve_session_oldest_age_seconds") > 0
    batches = prometheus.total('rnnserve_batch_size_count{engine="classification"}')
    assert batches >= 1


def test_rules_evaluate_and_the_eviction_alert_fires(prometheus: Any, traffic: dict[str, float],
                                                     deploy: Any) -> None:
    """Every rule evaluates cleanly on real series; the evictions the traffic forced alert."""

    def evaluated() -> list[dict[str, Any]]:
        rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        return rules if all(r.get("lastEvaluation", "").startswith("20") for r in rules) else []

    rules = deploy.wait_for(evaluated, timeout=10, what="every rule to be evaluated")
    assert {r["health"] for r in rules} == {"ok"}, [r for r in rules if r["health"] != "ok"]

    def eviction_alert() -> list[dict[str, Any]]:
        return [a for a in prometheus.api("alerts")["alerts"]
                if a["labels"]["alertname"] == "RnnserveSessionEvictions"
                and a["state"] == "firing"]

    [alert] = deploy.wait_for(eviction_alert, timeout=10, what="RnnserveSessionEvictions")
    assert alert["labels"]["model"] == "timemachine"
    assert alert["labels"]["job"] == "rnnserve"
    others = {a["labels"]["alertname"] for a in prometheus.api("alerts")["alerts"]}
    assert "RnnserveDown" not in others and "RnnserveHighErrorRatio" not in others
