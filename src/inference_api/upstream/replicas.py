"""The replicas of one upstream model and how a request picks one: least outstanding requests among the healthy
ones that have room, a chat session kept on the replica it used last while that one is healthy (its prefix
cache there is warm)."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from inference_api.errors import ErrorCode, ServiceError
from inference_api.modeling.registry import BASE_VERSION, BaseModelSpec

# Sessions remembered per model for stickiness; the oldest is forgotten first (it only loses a warm cache).
_STICKY_SESSIONS = 65_536


@dataclass(eq=False)
class Replica:
    url: str  # the /v1 base URL
    max_in_flight: int
    healthy: bool = True  # until a check or a request says otherwise
    in_flight: int = 0
    served: int = 0
    errors: int = 0
    latency: float | None = None  # moving average of the time to response headers, seconds
    last_error: str | None = None
    checked_at: float | None = None

    @property
    def root(self) -> str:
        """The server's root (where vLLM answers /health and /tokenize): the URL without its /v1."""
        return self.url.removesuffix("/v1")

    @property
    def full(self) -> bool:
        return self.in_flight >= self.max_in_flight

    def observe_latency(self, seconds: float) -> None:
        self.latency = seconds if self.latency is None else 0.8 * self.latency + 0.2 * seconds

    def snapshot(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "healthy": self.healthy,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "served": self.served,
            "errors": self.errors,
            "latency_seconds": None if self.latency is None else round(self.latency, 6),
            "last_error": self.last_error,
            "checked_seconds_ago": None if self.checked_at is None else round(time.monotonic() - self.checked_at, 1),
        }


@dataclass(eq=False)
class ReplicaSet:
    """One upstream model's replicas (the URLs of its registry entry)."""

    spec: BaseModelSpec
    api_key: str | None
    replicas: list[Replica]
    _sticky: OrderedDict[str, Replica] = field(default_factory=OrderedDict)
    _turn: int = 0  # rotates ties, so equal replicas share the load

    @classmethod
    def of(cls, spec: BaseModelSpec, api_key: str | None) -> ReplicaSet:
        assert spec.upstream is not None
        limit = spec.upstream.max_in_flight
        return cls(spec, api_key, [Replica(url.rstrip("/"), limit) for url in spec.upstream.urls])

    @property
    def name(self) -> str:
        return self.spec.name

    def upstream_model(self, version: str) -> str:
        return self.spec.upstream_model(version or BASE_VERSION)

    def pick(self, affinity: str | None = None, exclude: list[Replica] | tuple[Replica, ...] = ()) -> Replica:
        """The replica for the next request: the session's own while it is healthy and has room, else the one
        with the fewest requests open. None healthy: MODEL_NOT_READY; all full: OVERLOADED (both with Retry-After)."""
        healthy = [r for r in self.replicas if r.healthy and r not in exclude]
        if not healthy:
            raise ServiceError(
                ErrorCode.MODEL_NOT_READY,
                f"no upstream replica of model {self.name!r} is reachable; retry shortly",
                retry_after=5,
            )
        open_ = [r for r in healthy if not r.full]
        if not open_:
            raise ServiceError(
                ErrorCode.OVERLOADED,
                f"every upstream replica of model {self.name!r} is at its limit of requests; retry shortly",
                retry_after=1,
            )
        if affinity is not None:
            kept = self._sticky.get(affinity)
            if kept is not None and kept in open_:
                self._sticky.move_to_end(affinity)
                return kept
        count = len(self.replicas)
        self._turn = (self._turn + 1) % count
        order = {id(r): (i - self._turn) % count for i, r in enumerate(self.replicas)}
        chosen = min(open_, key=lambda r: (r.in_flight, order[id(r)]))
        if affinity is not None:
            self._sticky[affinity] = chosen
            self._sticky.move_to_end(affinity)
            while len(self._sticky) > _STICKY_SESSIONS:
                self._sticky.popitem(last=False)
        return chosen

    def snapshot(self) -> dict[str, Any]:
        assert self.spec.upstream is not None
        return {
            "model": self.name,
            "upstream_model": self.spec.upstream.model,
            "tokenizer": "local" if self.spec.source.location else "upstream /tokenize",
            "replicas": [r.snapshot() for r in self.replicas],
        }
