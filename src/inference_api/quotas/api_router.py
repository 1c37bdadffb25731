"""GET /usage."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from fastapi import APIRouter, Request

from inference_api.auth.deps import CallerDep
from inference_api.quotas.deps import QuotasDep
from inference_api.quotas.protocol import RequestLimitUsage, TokenUsage, TokenWindowUsage, UsageResponse
from inference_api.quotas.service import WindowUsage
from inference_api.ratelimit.deps import RateLimiterDep, caller_of

router = APIRouter(tags=["usage"])


def _window(usage: WindowUsage, now: float) -> TokenWindowUsage:
    limit = usage.limit
    return TokenWindowUsage(
        used=usage.counts.used,
        reserved=usage.counts.reserved,
        limit=limit,
        remaining=None if limit is None else max(0, limit - usage.counts.taken),
        resets_at=datetime.fromtimestamp(usage.window.reset_at, UTC),
        resets_in=max(1, int(usage.window.reset_at - now + 0.999)),
    )


@router.get("/usage", response_model=UsageResponse)
async def usage(request: Request, caller: CallerDep, quotas: QuotasDep, limiter: RateLimiterDep) -> UsageResponse:
    """Your generated tokens this minute and today against your quotas, and your request rate limits."""
    minute, day = await quotas.usage(caller.name)
    now = time.time()
    states = await limiter.states(caller_of(request, caller.name), caller.name)
    return UsageResponse(
        key=caller.name,
        tokens=TokenUsage(minute=_window(minute, now), day=_window(day, now)),
        requests=[
            RequestLimitUsage(
                limit=str(s.limit),
                applies_to="generation routes" if s.bucket == "generation" else "all routes",
                remaining=s.remaining,
                resets_in=s.reset_in(now),
            )
            for s in states
        ],
    )
