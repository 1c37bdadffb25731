"""How many requests a caller may make: RATE_LIMIT everywhere, RATE_LIMIT_GENERATION on generation routes.

Budgets live in slowapi's limiter (the `limits` storage: memory, or Redis at REDIS_URL so that replicas
share them). A key with its own `rate_limit` is held to that alone, on every route.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from limits import RateLimitItem, parse_many
from slowapi import Limiter
from slowapi.util import get_remote_address

from inference_api.auth.keys import ApiKeyStore
from inference_api.settings import Settings

logger = logging.getLogger(__name__)

# The routes that start generating, by route template: they also count against RATE_LIMIT_GENERATION.
# A route added later gets RATE_LIMIT alone until it is named here.
GENERATION_ROUTES = frozenset(
    {
        "/infer",
        "/chat/start",
        "/chat/{session_id}/messages",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/responses",
    }
)
KEY_PREFIX = "inference-api"

Bucket = Literal["all", "generation"]


@dataclass(frozen=True)
class LimitState:
    """One limit as it stands after this request: what it allows, what is left, when it resets (epoch)."""

    limit: RateLimitItem
    bucket: Bucket
    remaining: int
    reset_at: float

    def reset_in(self, now: float | None = None) -> int:
        return max(1, math.ceil(self.reset_at - (now or time.time())))


@dataclass(frozen=True)
class Decision:
    allowed: bool
    # The refused limit, else the one closest to running out; None when the storage could not be asked.
    binding: LimitState | None


class RateLimiter:
    def __init__(self, settings: Settings, keys: ApiKeyStore) -> None:
        self._keys = keys
        self._shared = settings.redis_url is not None
        self._slowapi = Limiter(
            key_func=get_remote_address,
            storage_uri=settings.redis_url or "memory://",
            strategy="fixed-window",
            key_prefix=KEY_PREFIX,
            headers_enabled=True,
        )
        self._default = parse_many(settings.rate_limit)
        self._generation = parse_many(settings.rate_limit_generation)
        self._own: dict[str, list[RateLimitItem]] = {}
        # Probes must never be refused: an orchestrator that gets 429 from /health restarts a healthy pod.
        self.exempt = frozenset({"/health", "/ready", settings.metrics_path})
        self.rejected = 0
        # Called with the caller ("key:alice" / "addr:10.0.0.7") on every refusal, e.g. to count it in a metric.
        self.on_reject: list[Callable[[str], None]] = []

    def limits_for(self, key_name: str | None, generation: bool) -> list[tuple[Bucket, RateLimitItem]]:
        if key_name is not None:
            own = self._keys.limits(key_name).rate_limit
            if own is not None:
                if key_name not in self._own:
                    self._own[key_name] = parse_many(own)
                return [("all", item) for item in self._own[key_name]]
        limits: list[tuple[Bucket, RateLimitItem]] = [("all", item) for item in self._default]
        if generation:
            limits += [("generation", item) for item in self._generation]
        return limits

    async def hit(self, caller: str, key_name: str | None, *, generation: bool) -> Decision:
        """Count one request against every limit that applies; refused when any of them is spent."""
        limits = self.limits_for(key_name, generation)
        try:
            # The Redis storage is synchronous: it runs off the event loop.
            decision = await asyncio.to_thread(self._hit, caller, limits) if self._shared else self._hit(caller, limits)
        except Exception as exc:
            # Failing open: a Redis outage must not turn every request into an error.
            logger.warning("rate limit storage unavailable (%s); request let through", type(exc).__name__)
            return Decision(True, None)
        if not decision.allowed:
            self.rejected += 1
            for callback in self.on_reject:
                callback(caller)
        return decision

    async def states(self, caller: str, key_name: str | None) -> list[LimitState]:
        """Where every limit of the caller stands, without counting a request."""
        limits = self.limits_for(key_name, generation=True)
        if not self._shared:
            return self._states(caller, limits)
        try:
            return await asyncio.to_thread(self._states, caller, limits)
        except Exception as exc:
            # As for `hit`: the counters being out of reach is no reason to fail the caller's request.
            logger.warning("rate limit storage unavailable (%s); limits not reported", type(exc).__name__)
            return []

    def _hit(self, caller: str, limits: list[tuple[Bucket, RateLimitItem]]) -> Decision:
        strategy = self._slowapi.limiter
        states = []
        for bucket, item in limits:
            allowed = strategy.hit(item, KEY_PREFIX, caller, bucket)
            stats = strategy.get_window_stats(item, KEY_PREFIX, caller, bucket)
            state = LimitState(item, bucket, stats.remaining, stats.reset_time)
            if not allowed:
                return Decision(False, state)
            states.append(state)
        return Decision(True, min(states, key=lambda s: (s.remaining, -s.reset_at)) if states else None)

    def _states(self, caller: str, limits: list[tuple[Bucket, RateLimitItem]]) -> list[LimitState]:
        strategy = self._slowapi.limiter
        states = []
        for bucket, item in limits:
            stats = strategy.get_window_stats(item, KEY_PREFIX, caller, bucket)
            states.append(LimitState(item, bucket, stats.remaining, stats.reset_time))
        return states
