"""Token counts that survive a Redis outage: this process's own counts stand in while Redis is unreachable.

Quotas are not worth an outage of generation: with REDIS_URL set and Redis down, every reservation
failed and every generation route answered 500 (issue 19), even for keys without any quota. Instead,
while Redis cannot be reached, reservations go to an in-memory store: a key with a quota is held to it
by each replica on its own (so, across N replicas, to at most N times it) rather than refused or let
through unbounded, and usage goes on being counted. Redis is tried again after `retry_seconds`; a
reservation settles in the store that took it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from inference_api.quotas.store import Counts, MemoryQuotaStore, QuotaStore, Refusal, Window

logger = logging.getLogger(__name__)

# What "Redis is unreachable" looks like to redis-py (a refused or reset connection, a socket timeout).
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError, OSError)
DEFAULT_RETRY_SECONDS = 5.0


class FallbackQuotaStore:
    """`primary` (Redis) while it answers, `fallback` (memory) while it does not."""

    def __init__(
        self,
        primary: QuotaStore,
        fallback: QuotaStore | None = None,
        *,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.primary = primary
        self.fallback = fallback or MemoryQuotaStore()
        self._retry_seconds = retry_seconds
        self._clock = clock
        self._down_until: float | None = None  # while set and not past, the primary is not tried
        self.outages = 0
        self.last_error: str | None = None

    @property
    def degraded(self) -> bool:
        return self._down_until is not None

    def _current(self) -> QuotaStore:
        if self._down_until is not None and self._clock() < self._down_until:
            return self.fallback
        return self.primary

    def _failed(self, exc: BaseException) -> None:
        if self._down_until is None:
            self.outages += 1
            logger.warning("token quota store unreachable (%s); counting in this process meanwhile", type(exc).__name__)
        self.last_error = type(exc).__name__
        self._down_until = self._clock() + self._retry_seconds

    def _recovered(self) -> None:
        if self._down_until is not None:
            logger.info("token quota store reachable again")
        self._down_until = None

    async def reserve_in(
        self, owner: str, amount: int, checks: list[tuple[Window, int | None]]
    ) -> tuple[Refusal | None, QuotaStore]:
        """Reserve, and say which store took the reservation (it is settled there)."""
        store = self._current()
        if store is self.primary:
            try:
                refusal = await self.primary.reserve(owner, amount, checks)
            except UNREACHABLE as exc:
                self._failed(exc)
            else:
                self._recovered()
                return refusal, self.primary
        return await self.fallback.reserve(owner, amount, checks), self.fallback

    async def reserve(self, owner: str, amount: int, checks: list[tuple[Window, int | None]]) -> Refusal | None:
        refusal, _ = await self.reserve_in(owner, amount, checks)
        return refusal

    async def settle(self, owner: str, windows: list[Window], reserved: int, used: int) -> None:
        await self.settle_in(self._current(), owner, windows, reserved, used)

    async def settle_in(self, store: QuotaStore, owner: str, windows: list[Window], reserved: int, used: int) -> None:
        if store is self.fallback:
            await self.fallback.settle(owner, windows, reserved, used)
            return
        try:
            await self.primary.settle(owner, windows, reserved, used)
        except UNREACHABLE as exc:
            # The reservation stays in Redis until its window expires; what was generated is counted here.
            self._failed(exc)
            await self.fallback.settle(owner, windows, 0, used)

    async def counts(self, owner: str, windows: list[Window]) -> list[Counts]:
        if self._current() is self.primary:
            try:
                counts = await self.primary.counts(owner, windows)
            except UNREACHABLE as exc:
                self._failed(exc)
            else:
                self._recovered()
                return counts
        return await self.fallback.counts(owner, windows)

    async def close(self) -> None:
        await self.primary.close()
        await self.fallback.close()
