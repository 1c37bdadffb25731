"""GET /stats/errors, and the Prometheus export at METRICS_PATH (open, like /health)."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter
from fastapi.responses import Response

from inference_api.api.deps import EngineDep, MetricsDep, ServicesDep
from inference_api.auth.deps import CallerDep
from inference_api.observability.metrics import CONTENT_TYPE
from inference_api.observability.protocol import ErrorStats
from inference_api.services import Services

logger = logging.getLogger(__name__)

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
    async def export(services: ServicesDep) -> Response:
        """Prometheus text format."""
        await refresh_store_gauges(services)
        # Merging many processes' files reads from disk: off the event loop.
        body = await asyncio.to_thread(services.metrics.exposition)
        return Response(body, media_type=CONTENT_TYPE)

    return metrics


async def refresh_store_gauges(services: Services) -> None:
    """Sessions and chunks are counted in their stores when scraped; a store that cannot answer skips its gauge."""
    try:
        services.metrics.sessions(await services.sessions.count())
    except Exception:
        logger.warning("counting sessions for the metrics failed", exc_info=True)
    documents = services.documents.loaded  # not built yet: nothing stored worth loading it for
    if documents is not None:
        try:
            services.metrics.chunks(await documents.chunk_count())
        except Exception:
            logger.warning("counting document chunks for the metrics failed", exc_info=True)
