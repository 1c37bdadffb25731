"""The helpers that read PromQL out of the deployment files, on expressions whose answer is known."""

from __future__ import annotations

import pytest

from tests.deploy.promql import contract_name, metric_names, queryable


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('up{job="inference-api"} == 0', {"up"}),
        (
            "histogram_quantile(0.95, sum by (job, le) (rate(api_response_time_seconds_bucket[5m]))) > 1",
            {"api_response_time_seconds_bucket"},
        ),
        (
            '(sum(rate(api_requests_total{status=~"5.."}[$__rate_interval])) or sum(rate(x_total[1m])) * 0)'
            " / sum without (instance) (rate(api_requests_total[1m] offset 5m))",
            {"api_requests_total", "x_total"},
        ),
        ("max by (job, instance) (queue_depth / queue_capacity) > 0.8", {"queue_depth", "queue_capacity"}),
        ("sum(a) by (le) + on(instance) group_left(device) b", {"a", "b"}),
    ],
)
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_contract_name_folds_histogram_series_only() -> None:
    assert contract_name("time_to_first_token_seconds_bucket") == "time_to_first_token_seconds"
    assert contract_name("api_response_time_seconds_count") == "api_response_time_seconds"
    assert contract_name("queue_depth") == "queue_depth"
    assert contract_name("made_up_bucket") == "made_up_bucket"


def test_queryable_reports_the_threshold_instead_of_filtering() -> None:
    assert queryable("max(x) by (a) > 0.8") == "max(x) by (a) > bool 0.8"
    assert queryable("up == 0") == "up == bool 0"
    assert queryable("rate(x[$__rate_interval])") == "rate(x[1m])"
