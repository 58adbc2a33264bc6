"""The Grafana dashboard (deploy/grafana/dashboards/rnnserve.json) against the real server.

Every query may name only metrics that a live server exports (histograms with their _bucket,
_sum and _count series), plus ``up``, which Prometheus itself writes for each target. Every query
then runs in the real Prometheus of test_prometheus_live.py, with Grafana's variables filled in,
and every panel shows data after the test traffic.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

DASHBOARD = "deploy/grafana/dashboards/rnnserve.json"
DATASOURCES = "deploy/grafana/provisioning/datasources/prometheus.yml"
PROMETHEUS_SERIES = {"up"}  # written by Prometheus for every scrape target, not by the server
# What the deployment issue asks the dashboard to show -> a metric each such panel must query.
REQUIRED = {
    "requests/s by method and code": "rnnserve_requests_total",
    "latency percentiles": "rnnserve_request_duration_seconds_bucket",
    "time-to-first-token percentiles": "rnnserve_time_to_first_token_seconds_bucket",
    "generated tokens/s": "rnnserve_generated_tokens_total",
    "active sessions": "rnnserve_sessions_active",
    "batch size": "rnnserve_batch_size_bucket",
    "queue depth": "rnnserve_queue_depth",
    "session state bytes": "rnnserve_session_state_bytes",
    "evictions": "rnnserve_sessions_removed_total",
}
# Grafana's variables, as the test fills them in (every instance and model; a 1 m rate window).
VARIABLES = {"$__rate_interval": "1m", "$instance": ".*", "$model": ".*"}
# Panels that draw one series per replica (Prometheus' `instance`: each replica is one target).
PER_REPLICA = ("Server up", "Requests/s", "Server error ratio", "Requests in flight",
               "Request latency by method", "Generated tokens/s", "Queue depth")

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                "unless", "bool", "offset", "inf", "nan"}
IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    names = set(re.findall(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", expr))
    expr = re.sub(r"label_values\(\s*[a-zA-Z_:][a-zA-Z0-9_:]*", "label_values(", expr)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)        # string literals
    expr = re.sub(r"\{[^}]*\}", " ", expr)                  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)                 # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r",\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)", ")", expr)  # label_values(..., label)
    for match in IDENTIFIER.finditer(expr):
        word, before = match.group(), expr[:match.start()].rstrip()
        if expr[match.end():].lstrip().startswith("("):
            continue                                        # a function call
        if word.lower() in PROMQL_WORDS or (before and (before[-1].isdigit() or before[-1] in
                                                        ".$")):
            continue                                        # keyword, 1e3, $variable
        names.add(word)
    return names


def test_metric_name_parser() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (method, le) (rate(a_bucket{x=~"$model", y="b c"}'
        "[$__rate_interval]))) / on(job) group_left(model) b_total offset 5m > 1e3 or vector(0)"
    ) == {"a_bucket", "b_total"}
    assert metric_names('label_values(up{job="rnnserve"}, instance)') == {"up"}
    assert metric_names("sum(rate(x_sum[1m])) / sum(rate(x_count[1m]))") == {"x_sum", "x_count"}


@pytest.fixture(scope="module")
def dashboard(deploy: Any) -> dict[str, Any]:
    return json.loads((deploy.ROOT / DASHBOARD).read_text())


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and query variable."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            yield f"variable {variable['name']}", query["query"] if isinstance(query, dict) else query


def exported_names(exposition: str) -> set[str]:
    """Every series name a /metrics page offers, including metrics with no samples yet."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            elif kind == "summary":
                names |= {f"{name}_sum", f"{name}_count"}
            elif kind == "counter" and not name.endswith("_total"):
                names.add(f"{name}_total")
        elif line and not line.startswith("#"):
            names.add(IDENTIFIER.match(line).group())
    return names


def test_dashboard_structure(dashboard: dict[str, Any], deploy: Any) -> None:
    """What Grafana needs to provision it: ids, layout, targets, the provisioned data source."""
    assert dashboard["uid"] == "rnnserve" and dashboard["title"] == "rnnserve"
    all_panels = list(panels(dashboard))
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in all_panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] >= 1 and pos["x"] + pos["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not area & cells, f"panel {panel['title']!r} overlaps another"
        cells |= area
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs)), panel["title"]
    provisioned = deploy.load_yaml((deploy.ROOT / DATASOURCES).read_text())["datasources"][0]
    [source] = [v for v in dashboard["templating"]["list"] if v["name"] == "datasource"]
    assert source["current"]["value"] == provisioned["uid"]


def test_dashboard_has_the_required_panels(dashboard: dict[str, Any]) -> None:
    queried = set().union(*(metric_names(expr) for _, expr in queries(dashboard)))
    absent = {what: metric for what, metric in REQUIRED.items() if metric not in queried}
    assert not absent, f"no panel for {absent}"
    assert any("code" in expr and "method" in expr and "rnnserve_requests_total" in expr
               for _, expr in queries(dashboard))
    assert any('reason="evicted"' in expr for _, expr in queries(dashboard))


def test_queries_name_only_exported_metrics(dashboard: dict[str, Any], live_server: Any) -> None:
    exported = exported_names(live_server.scrape()) | PROMETHEUS_SERIES
    unknown = {where: sorted(metric_names(expr) - exported) for where, expr in queries(dashboard)
               if metric_names(expr) - exported}
    assert not unknown, f"queries naming metrics the server does not export: {unknown}"
    assert all(metric_names(expr) for _, expr in queries(dashboard))


def fill(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unfilled Grafana variable in {expr}"
    return expr


def test_every_panel_query_runs_and_shows_data(dashboard: dict[str, Any], prometheus: Any,
                                               traffic: dict[str, float]) -> None:
    """Each query is valid PromQL for Prometheus, and each panel has series after traffic."""
    empty = []
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        results = [prometheus.query(fill(t["expr"])) for t in panel["targets"]]
        if not any(results):
            empty.append(panel["title"])
    assert not empty, f"panels without data: {empty}"
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            metric, label = re.fullmatch(r"label_values\((.+),\s*(\w+)\)",
                                         variable["definition"]).groups()
            values = prometheus.api(f"label/{label}/values", **{"match[]": metric})
            assert values, f"variable {variable['name']} has no values"


def test_per_replica_panels_draw_one_series_per_instance(
        dashboard: dict[str, Any], prometheus: Any, traffic: dict[str, float]) -> None:
    """With several replicas behind the load balancer, these panels tell them apart: a target
    labelled by ``{{instance}}`` whose every series keeps the ``instance`` label."""
    by_title = {p["title"]: p for p in panels(dashboard)}
    for title in PER_REPLICA:
        targets = [t for t in by_title[title]["targets"]
                   if "{{instance}}" in t.get("legendFormat", "")]
        assert targets, f"{title}: no per-replica series"
        for target in targets:
            results = prometheus.query(fill(target["expr"]))
            assert results, f"{title}: {target['expr']} shows no data"
            assert all("instance" in r["metric"] for r in results), (
                f"{title}: {target['expr']} aggregates the replicas away")
