"""What the deployment files ask of the service: their PromQL expressions and the metric names in them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
RULES_FILE = DEPLOY / "prometheus" / "rules.yml"
DASHBOARD_FILE = DEPLOY / "grafana" / "dashboard.json"

# docs/metrics.md: SPEC §6 plus the names it fixes. Histograms are named without suffixes.
CONTRACT_COUNTERS = {
    "api_requests_total",
    "tokens_generated_total",
    "prompt_tokens_total",
    "model_cache_hits_total",
    "model_cache_misses_total",
    "successful_inferences_total",
    "failed_inferences_total",
    "requests_rejected_total",
    "requests_cancelled_total",
    "model_load_failures_total",
    "error_responses_total",
}
CONTRACT_HISTOGRAMS = {
    "api_response_time_seconds",
    "api_request_size_bytes",
    "api_response_size_bytes",
    "model_load_time_seconds",
    "token_generation_time_seconds",
    "time_to_first_token_seconds",
    "inter_token_latency_seconds",
    "request_queue_time_seconds",
}
CONTRACT_GAUGES = {
    "model_memory_usage_bytes",
    "queue_depth",
    "queue_capacity",
    "batch_size",
    "active_sessions",
    "vector_store_chunks",
    "device_memory_allocated_bytes",
    "device_memory_reserved_bytes",
    "device_memory_total_bytes",
    "device_memory_pressure",
}
# Written by Prometheus itself for every target, not by the service.
SYNTHETIC = {"up"}

# A dashboard's range variable, replaced by a window that a short test run has samples for.
RATE_INTERVAL = "$__rate_interval"
# Every alert ends in one comparison with a number, so `lhs op bool n` gives a value whether it fires or not.
THRESHOLD = re.compile(r"\s(==|!=|>=|<=|>|<)\s*(-?[0-9.]+)\s*$")

_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "inf", "nan"}
_STRING = re.compile(r'"(?:\\.|[^"\\])*"')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![A-Za-z0-9_:.$])[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The series names an expression selects (identifiers that are not functions, keywords or labels)."""
    text = _GROUPING.sub(" ", _RANGE.sub(" ", _MATCHERS.sub(" ", _STRING.sub('""', expr))))
    names = set()
    for match in _IDENTIFIER.finditer(text):
        if match.group() in _KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue
        names.add(match.group())
    return names


def contract_name(series: str) -> str:
    """The contract's name for a series name: a histogram's _bucket/_sum/_count series map to the histogram."""
    for suffix in ("_bucket", "_sum", "_count"):
        if series.endswith(suffix) and series.removesuffix(suffix) in CONTRACT_HISTOGRAMS:
            return series.removesuffix(suffix)
    return series


def contract_names() -> set[str]:
    return CONTRACT_COUNTERS | CONTRACT_HISTOGRAMS | CONTRACT_GAUGES


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES_FILE.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
    return loaded


def dashboard_panels() -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    panels = []
    for panel in dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def dashboard_expressions() -> dict[str, str]:
    """`panel title / refId` -> expr for every query of the dashboard."""
    return {
        f"{panel['title']} / {target['refId']}": target["expr"]
        for panel in dashboard_panels()
        for target in panel.get("targets", [])
    }


def alert_expressions() -> dict[str, str]:
    return {rule["alert"]: " ".join(str(rule["expr"]).split()) for rule in alert_rules()}


def queryable(expr: str, window: str = "1m") -> str:
    """The expression as a test asks Prometheus: a concrete window, and a threshold that reports, not filters."""
    return THRESHOLD.sub(r" \1 bool \2", expr.replace(RATE_INTERVAL, window))


def used_metric_names() -> dict[str, set[str]]:
    """Metric (series) name -> where it is used."""
    used: dict[str, set[str]] = {}
    for where, expr in [*dashboard_expressions().items(), *alert_expressions().items()]:
        for name in metric_names(expr):
            used.setdefault(name, set()).add(where)
    return used


def k8s_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
