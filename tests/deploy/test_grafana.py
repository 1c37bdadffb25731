"""deploy/grafana: an importable dashboard on a datasource variable, covering what operators watch, with
provisioning files that load it."""

from __future__ import annotations

import re

import yaml

from tests.deploy.promql import (
    DEPLOY,
    RATE_INTERVAL,
    SYNTHETIC,
    contract_name,
    contract_names,
    dashboard,
    dashboard_expressions,
    dashboard_panels,
    metric_names,
)

GRAFANA = DEPLOY / "grafana"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}

# What the issue asks the dashboard to show, by the metric that shows it.
REQUIRED_METRICS = {
    "requests/s and error rate": "api_requests_total",
    "latency p50/p95/p99": "api_response_time_seconds_bucket",
    "time to first token": "time_to_first_token_seconds_bucket",
    "tokens/s": "tokens_generated_total",
    "queue depth": "queue_depth",
    "batch size": "batch_size",
    "cache hit rate": "model_cache_hits_total",
    "device memory": "device_memory_allocated_bytes",
    "active sessions": "active_sessions",
    "documents": "vector_store_chunks",
    "rejected requests": "requests_rejected_total",
    "cancelled requests": "requests_cancelled_total",
}


def test_the_dashboard_picks_its_datasource_from_a_variable() -> None:
    board = dashboard()
    (variable,) = [v for v in board["templating"]["list"] if v["name"] == "DS_PROMETHEUS"]
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    for panel in dashboard_panels():
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
    assert board["uid"] and board["title"]


def test_panel_ids_are_unique_and_panels_do_not_overlap() -> None:
    panels = dashboard_panels()
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine


def test_the_dashboard_shows_what_the_issue_asks_for() -> None:
    used = set().union(*(metric_names(expr) for expr in dashboard_expressions().values()))
    missing = {what: metric for what, metric in REQUIRED_METRICS.items() if metric not in used}
    assert not missing
    latency = [expr for expr in dashboard_expressions().values() if "api_response_time_seconds_bucket" in expr]
    assert {q for q in ("0.5", "0.95", "0.99") if any(f"histogram_quantile({q}," in e for e in latency)} == {
        "0.5",
        "0.95",
        "0.99",
    }


def test_the_dashboard_asks_only_for_contract_metrics() -> None:
    known = contract_names() | SYNTHETIC
    for where, expr in dashboard_expressions().items():
        unknown = {series for series in metric_names(expr) if contract_name(series) not in known}
        assert not unknown, f"{where} uses metrics outside the contract: {sorted(unknown)}"


def test_range_selectors_use_the_rate_interval_variable() -> None:
    """A fixed window would be too short for a long scrape interval, or too coarse for a short one."""
    for where, expr in dashboard_expressions().items():
        windows = set(re.findall(r"\[([^\]]*)\]", expr))
        assert windows <= {RATE_INTERVAL}, f"{where}: {sorted(windows)}"


def test_provisioning_points_at_the_datasource_and_the_dashboard_folder() -> None:
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http")
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "inference-api.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
    assert datasources["apiVersion"] == providers["apiVersion"] == 1
