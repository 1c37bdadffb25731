"""Dependencies of the observability routes."""

from __future__ import annotations

from typing import Annotated, Protocol, cast

from fastapi import Depends, Request

from inference_api.api.state import app_state
from inference_api.observability.metrics import Metrics


class ObservabilityState(Protocol):
    metrics: Metrics

    async def refresh_store_gauges(self) -> None:
        """Count what the stores hold into their gauges (at a scrape: counting is a query, not an event)."""


def get_metrics(request: Request) -> Metrics:
    return cast(ObservabilityState, app_state(request)).metrics


def get_observability(request: Request) -> ObservabilityState:
    return cast(ObservabilityState, app_state(request))


MetricsDep = Annotated[Metrics, Depends(get_metrics)]
ObservabilityDep = Annotated[ObservabilityState, Depends(get_observability)]
