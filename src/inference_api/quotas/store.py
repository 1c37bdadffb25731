"""Where token budgets are counted: in this process, or in Redis so that replicas share one budget.

A window (a UTC minute or a UTC day) holds two counts per key: `used` (tokens generated, settled) and
`reserved` (`max_new_tokens` of requests still running). A request is admitted when used + reserved +
its own reservation stays within the limit of every window; when it ends, its reservation is replaced
by what it really generated, in the windows it reserved in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import redis.asyncio as aioredis

WindowKind = Literal["minute", "day"]
WINDOW_SECONDS: dict[WindowKind, int] = {"minute": 60, "day": 86400}


@dataclass(frozen=True)
class Window:
    kind: WindowKind
    start: int  # epoch seconds, a multiple of the window's length

    @classmethod
    def current(cls, kind: WindowKind, now: float) -> Window:
        size = WINDOW_SECONDS[kind]
        return cls(kind, int(now // size) * size)

    @property
    def reset_at(self) -> int:
        return self.start + WINDOW_SECONDS[self.kind]


@dataclass(frozen=True)
class Counts:
    used: int = 0
    reserved: int = 0

    @property
    def taken(self) -> int:
        return self.used + self.reserved


@dataclass(frozen=True)
class Refusal:
    window: Window
    limit: int
    taken: int


class QuotaStore(Protocol):
    async def reserve(self, owner: str, amount: int, checks: list[tuple[Window, int | None]]) -> Refusal | None:
        """Reserve `amount` in every window, or nothing (the first window whose limit it would pass)."""
        ...

    async def settle(self, owner: str, windows: list[Window], reserved: int, used: int) -> None: ...

    async def counts(self, owner: str, windows: list[Window]) -> list[Counts]: ...

    async def close(self) -> None: ...


class MemoryQuotaStore:
    """Counts in this process (event loop only, so no lock): right for one replica."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, Window], Counts] = {}

    async def reserve(self, owner: str, amount: int, checks: list[tuple[Window, int | None]]) -> Refusal | None:
        self._forget_ended(min((w.start for w, _ in checks), default=0))
        for window, limit in checks:
            taken = self._counts.get((owner, window), Counts()).taken
            if limit is not None and taken + amount > limit:
                return Refusal(window, limit, taken)
        for window, _ in checks:
            counts = self._counts.get((owner, window), Counts())
            self._counts[(owner, window)] = Counts(counts.used, counts.reserved + amount)
        return None

    async def settle(self, owner: str, windows: list[Window], reserved: int, used: int) -> None:
        for window in windows:
            counts = self._counts.get((owner, window))
            if counts is not None:
                self._counts[(owner, window)] = Counts(counts.used + used, max(0, counts.reserved - reserved))

    async def counts(self, owner: str, windows: list[Window]) -> list[Counts]:
        return [self._counts.get((owner, window), Counts()) for window in windows]

    def _forget_ended(self, now: int) -> None:
        ended = [k for k in self._counts if k[1].reset_at <= now]
        for key in ended:
            del self._counts[key]

    async def close(self) -> None:
        return None


# KEYS: the window hashes. ARGV: amount, then each window's limit (-1: none), then each one's expiry (epoch).
_RESERVE = """
local amount = tonumber(ARGV[1])
local n = #KEYS
for i = 1, n do
  local limit = tonumber(ARGV[1 + i])
  if limit >= 0 then
    local v = redis.call('HMGET', KEYS[i], 'used', 'reserved')
    local taken = tonumber(v[1] or 0) + tonumber(v[2] or 0)
    if taken + amount > limit then return {i, taken} end
  end
end
for i = 1, n do
  redis.call('HINCRBY', KEYS[i], 'reserved', amount)
  redis.call('EXPIREAT', KEYS[i], ARGV[1 + n + i])
end
return {0, 0}
"""

# KEYS: the window hashes the request reserved in. ARGV: reserved, used. A window already expired stays gone.
_SETTLE = """
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    if redis.call('HINCRBY', KEYS[i], 'reserved', -tonumber(ARGV[1])) < 0 then
      redis.call('HSET', KEYS[i], 'reserved', 0)
    end
    redis.call('HINCRBY', KEYS[i], 'used', ARGV[2])
  end
end
return 0
"""

# A window's counts outlive it briefly, so a request running across its end still settles there.
_EXPIRY_MARGIN = 300


class RedisQuotaStore:
    """Counts in Redis, each check-and-reserve one Lua script, so replicas cannot both take the last tokens.

    Keys: `{prefix}:quota:{window}:{start}:{owner}`, a hash of `used` and `reserved`, expiring after the window.
    """

    def __init__(self, client: aioredis.Redis, prefix: str = "inference-api") -> None:
        self._client = client
        self._prefix = prefix
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)

    @classmethod
    def connect(cls, url: str, prefix: str = "inference-api") -> RedisQuotaStore:
        # Timeouts: a Redis that hangs (rather than refusing connections) must fail over, not hold requests.
        client = aioredis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=1, socket_timeout=2)
        return cls(client, prefix)

    def _key(self, owner: str, window: Window) -> str:
        return f"{self._prefix}:quota:{window.kind}:{window.start}:{owner}"

    async def reserve(self, owner: str, amount: int, checks: list[tuple[Window, int | None]]) -> Refusal | None:
        keys = [self._key(owner, window) for window, _ in checks]
        limits = [-1 if limit is None else limit for _, limit in checks]
        expiries = [window.reset_at + _EXPIRY_MARGIN for window, _ in checks]
        index, taken = await self._reserve(keys=keys, args=[amount, *limits, *expiries])
        if int(index) == 0:
            return None
        window, limit = checks[int(index) - 1]
        assert limit is not None
        return Refusal(window, limit, int(taken))

    async def settle(self, owner: str, windows: list[Window], reserved: int, used: int) -> None:
        await self._settle(keys=[self._key(owner, w) for w in windows], args=[reserved, used])

    async def counts(self, owner: str, windows: list[Window]) -> list[Counts]:
        async with self._client.pipeline(transaction=False) as pipe:
            for window in windows:
                pipe.hmget(self._key(owner, window), ["used", "reserved"])
            rows = await pipe.execute()
        return [Counts(int(used or 0), int(reserved or 0)) for used, reserved in rows]

    async def close(self) -> None:
        await self._client.aclose()
