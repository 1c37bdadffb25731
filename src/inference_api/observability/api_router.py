"""GET /stats/errors, and the Prometheus export at METRICS_PATH (open, like /health)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import Response

from inference_api.auth.deps import CallerDep
from inference_api.generation.deps import EngineDep
from inference_api.observability.deps import MetricsDep, ObservabilityDep
from inference_api.observability.metrics import CONTENT_TYPE
from inference_api.observability.protocol import ErrorStats

router = APIRouter(tags=["observability"])


@router.get("/stats/errors", response_model=ErrorStats)
async def error_stats(_: CallerDep, metrics: MetricsDep, engine: EngineDep) -> ErrorStats:
    """Error envelopes sent since start, by error code (the same counts as error_responses_total)."""
    counts = await asyncio.to_thread(metrics.error_counts)
    errors = {code: count for code, count in sorted(counts.items()) if count}
    return ErrorStats(since=engine.started_at, total=sum(errors.values()), errors=errors)


def metrics_router(path: str) -> APIRouter:
    metrics = APIRouter(tags=["observability"])

    @metrics.get(path, include_in_schema=False)
    async def export(observability: ObservabilityDep) -> Response:
        """Prometheus text format."""
        await observability.refresh_store_gauges()
        # Merging many processes' files reads from disk: off the event loop.
        body = await asyncio.to_thread(observability.metrics.exposition)
        return Response(body, media_type=CONTENT_TYPE)

    return metrics
