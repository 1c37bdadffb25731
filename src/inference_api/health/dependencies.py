"""Whether the servers this replica depends on answer: Redis (REDIS_URL) and a Chroma server (CHROMA_URL).

Readiness tells a load balancer whether to send this replica traffic. Every replica shares the same
Redis and Chroma server, so taking replicas out when one of them is down would turn a partial outage
(chat sessions, or documents) into a full one, though stateless generation (/infer, /v1) still works
on every replica. So /ready stays 200 with the dependency listed under `degraded`, and /status shows
each dependency's state; the routes that need a missing dependency answer 503 DEPENDENCY_UNAVAILABLE.
Checks run when asked, at most every `ttl` seconds, each bounded by `timeout`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import httpx
import redis.asyncio as aioredis

from inference_api.redaction import redact_url
from inference_api.settings import Settings

Check = Callable[[], Awaitable[None]]


@dataclass
class DependencyState:
    name: str
    url: str | None  # credentials masked
    up: bool | None = None  # None: not checked yet
    checked_at: float | None = None
    down_since: float | None = None
    error: str | None = None
    needed_by: list[str] = field(default_factory=list)

    def view(self) -> dict[str, object]:
        return {
            "status": "unknown" if self.up is None else "up" if self.up else "down",
            "url": self.url,
            "checked_at": self.checked_at,
            "down_since": self.down_since,
            "error": self.error,
            "needed_by": self.needed_by,
        }


class DependencyMonitor:
    def __init__(self, settings: Settings, *, timeout: float = 0.5, ttl: float = 2.0) -> None:
        self._timeout = timeout
        self._ttl = ttl
        self._checks: dict[str, Check] = {}
        self.states: dict[str, DependencyState] = {}
        self._lock = asyncio.Lock()
        if settings.redis_url:
            url = settings.redis_url
            self._add("redis", url, ["chat sessions (/chat/...)"], lambda: _ping_redis(url, timeout))
        if settings.chroma_url:
            url = settings.chroma_url
            self._add("chroma", url, ["documents (/upload, /documents, use_documents)"], lambda: _chroma(url, timeout))

    def _add(self, name: str, url: str, needed_by: list[str], check: Check) -> None:
        self._checks[name] = check
        self.states[name] = DependencyState(name, redact_url(url), needed_by=needed_by)

    async def check(self, suspect: Iterable[str] = ()) -> dict[str, DependencyState]:
        """Every dependency's state, checked again if the last check is older than `ttl`, or found up but
        `suspect` (a store saw it fail since)."""
        async with self._lock:  # probes arriving together share one round of checks
            now = time.time()
            again = {n for n in suspect if n in self.states and self.states[n].up}
            stale = [
                n
                for n, s in self.states.items()
                if s.checked_at is None or now - s.checked_at >= self._ttl or n in again
            ]
            results = await asyncio.gather(*(self._run(self._checks[n]) for n in stale))
            for name, error in zip(stale, results, strict=True):
                self._record(self.states[name], error, time.time())
        return self.states

    async def _run(self, check: Check) -> str | None:
        try:
            await asyncio.wait_for(check(), timeout=self._timeout)
        except Exception as exc:
            return type(exc).__name__
        return None

    @staticmethod
    def _record(state: DependencyState, error: str | None, now: float) -> None:
        up = error is None
        if not up and state.up is not False:
            state.down_since = now
        if up:
            state.down_since = None
        state.up, state.error, state.checked_at = up, error, now


async def _ping_redis(url: str, seconds: float) -> None:
    client = aioredis.Redis.from_url(url, socket_connect_timeout=seconds, socket_timeout=seconds)
    try:
        await client.ping()
    finally:
        await client.aclose()


async def _chroma(url: str, seconds: float) -> None:
    async with httpx.AsyncClient(timeout=seconds) as client:
        response = await client.get(f"{url.rstrip('/')}/api/v2/heartbeat")
        response.raise_for_status()
