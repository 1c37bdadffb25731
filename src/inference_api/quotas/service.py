"""Token quotas: a request reserves its `max_new_tokens` before it is queued and settles what it generated.

Limits per key: the key's own `tokens_per_minute` / `tokens_per_day`, else TOKENS_PER_MINUTE /
TOKENS_PER_DAY, else none (usage is still counted, for GET /usage).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from inference_api.auth.keys import ApiKeyStore
from inference_api.engine.types import GenerationRequest
from inference_api.errors import ErrorCode, ServiceError
from inference_api.quotas.fallback import FallbackQuotaStore
from inference_api.quotas.store import (
    Counts,
    MemoryQuotaStore,
    QuotaStore,
    RedisQuotaStore,
    Refusal,
    Window,
    WindowKind,
)
from inference_api.settings import Settings

logger = logging.getLogger(__name__)

KINDS: tuple[WindowKind, ...] = ("minute", "day")


@dataclass(frozen=True)
class WindowUsage:
    window: Window
    counts: Counts
    limit: int | None


class TokenQuotas:
    """The engine's token budget (engine.types.TokenBudget); knows keys and windows, not HTTP."""

    def __init__(
        self, store: QuotaStore, keys: ApiKeyStore, settings: Settings, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._keys = keys
        self._defaults: dict[WindowKind, int | None] = {
            "minute": settings.tokens_per_minute,
            "day": settings.tokens_per_day,
        }
        self._clock = clock
        self._pending: dict[str, set[asyncio.Task[None]]] = defaultdict(set)
        self.rejected = 0
        self.generated: dict[str, int] = defaultdict(int)  # tokens settled per key since start
        # Hooks, e.g. for metrics: on_reject(key name), on_settle(key name, tokens generated).
        self.on_reject: list[Callable[[str], None]] = []
        self.on_settle: list[Callable[[str, int], None]] = []

    @classmethod
    def build(cls, settings: Settings, keys: ApiKeyStore) -> TokenQuotas:
        store: QuotaStore = MemoryQuotaStore()
        if settings.redis_url:
            # Redis down must not stop generation: this process counts on its own meanwhile (quotas/fallback.py).
            store = FallbackQuotaStore(RedisQuotaStore.connect(settings.redis_url))
        return cls(store, keys, settings)

    @property
    def degraded(self) -> bool:
        """True while the shared counts (Redis) cannot be reached and this process counts on its own."""
        return isinstance(self._store, FallbackQuotaStore) and self._store.degraded

    def limit(self, owner: str, kind: WindowKind) -> int | None:
        limits = self._keys.limits(owner)
        own = limits.tokens_per_minute if kind == "minute" else limits.tokens_per_day
        return own if own is not None else self._defaults[kind]

    async def reserve(self, request: GenerationRequest) -> None:
        owner = request.owner
        assert owner is not None
        amount = request.params.max_new_tokens
        now = self._clock()
        windows = [Window.current(kind, now) for kind in KINDS]
        checks = [(w, self.limit(owner, w.kind)) for w in windows]
        task = asyncio.ensure_future(self._reserve(owner, amount, checks))
        try:
            # Shielded: a caller that leaves mid-reservation must not leave tokens reserved for nobody.
            refusal, store = await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(lambda t: self._refund_orphan(t, owner, windows, amount))
            raise
        if refusal is not None:
            raise self._refused(owner, amount, refusal, now)
        request.on_settle(lambda used: self._settle(owner, windows, amount, used, store))

    async def _reserve(
        self, owner: str, amount: int, checks: list[tuple[Window, int | None]]
    ) -> tuple[Refusal | None, QuotaStore]:
        """The reservation, and the store that took it: that is where it settles."""
        if isinstance(self._store, FallbackQuotaStore):
            return await self._store.reserve_in(owner, amount, checks)
        return await self._store.reserve(owner, amount, checks), self._store

    async def check(self, owner: str, amount: int) -> None:
        """Refuse now what `reserve` would refuse, reserving nothing: a stream checks this before its response
        starts, so that a spent quota is a plain 429; its own reservation later still decides a close race."""
        now = self._clock()
        windows = [Window.current(kind, now) for kind in KINDS]
        counts = await self._store.counts(owner, windows)
        for window, count in zip(windows, counts, strict=True):
            limit = self.limit(owner, window.kind)
            if limit is not None and count.taken + amount > limit:
                raise self._refused(owner, amount, Refusal(window, limit, count.taken), now)

    def _refund_orphan(
        self, task: asyncio.Task[tuple[Refusal | None, QuotaStore]], owner: str, windows: list[Window], amount: int
    ) -> None:
        if not task.cancelled() and task.exception() is None and task.result()[0] is None:
            self._settle(owner, windows, amount, 0, task.result()[1])

    def _settle(self, owner: str, windows: list[Window], reserved: int, used: int, store: QuotaStore) -> None:
        """Called on the event loop when the request ends; the store is updated in a task of its own."""
        if used:
            self.generated[owner] += used
            for callback in self.on_settle:
                callback(owner, used)
        pending = self._pending[owner]
        if isinstance(self._store, FallbackQuotaStore):
            settling = self._store.settle_in(store, owner, windows, reserved, used)
        else:
            settling = store.settle(owner, windows, reserved, used)
        task = asyncio.get_running_loop().create_task(settling)
        pending.add(task)
        task.add_done_callback(lambda t: self._settled(owner, t))

    def _settled(self, owner: str, task: asyncio.Task[None]) -> None:
        self._pending[owner].discard(task)
        if not self._pending[owner]:
            del self._pending[owner]
        if not task.cancelled() and task.exception() is not None:
            logger.warning("settling the token quota of %r failed: %r", owner, task.exception())

    def _refused(self, owner: str, amount: int, refusal: Refusal, now: float) -> ServiceError:
        """The refusal's error, counted (and reported to the hooks) as it is made."""
        self.rejected += 1
        for callback in self.on_reject:
            callback(owner)
        window, limit = refusal.window, refusal.limit
        reset_in = max(1, int(window.reset_at - now + 0.999))
        quota = f"{limit} tokens per {window.kind} for key {owner!r}"
        if amount > limit:
            message = (
                f"token quota exceeded: max_new_tokens={amount} is more than the whole quota of {quota}; "
                "ask for fewer tokens"
            )
        else:
            message = (
                f"token quota exceeded: {quota} ({refusal.taken} used or reserved, max_new_tokens={amount} "
                f"asked for); resets in {reset_in} s"
            )
        return ServiceError(ErrorCode.RATE_LIMITED, message, retry_after=reset_in)

    async def usage(self, owner: str) -> list[WindowUsage]:
        """This minute and today for `owner`, once this process's own settlements for it have landed."""
        pending = list(self._pending.get(owner, ()))
        if pending:
            await asyncio.wait(pending)
        windows = [Window.current(kind, self._clock()) for kind in KINDS]
        counts = await self._store.counts(owner, windows)
        return [WindowUsage(w, c, self.limit(owner, w.kind)) for w, c in zip(windows, counts, strict=True)]

    async def close(self) -> None:
        tasks = [t for pending in self._pending.values() for t in pending]
        if tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait(tasks, timeout=5)
        await self._store.close()
