"""The bounded queue in front of the workers: admission control happens here, at once, never by waiting."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from inference_api.engine.types import GenerationRequest
from inference_api.errors import ErrorCode, ServiceError


class RequestQueue:
    def __init__(self, maxsize: int, retry_after: int = 1, on_depth: Callable[[int], None] | None = None) -> None:
        self.maxsize = maxsize
        self.retry_after = retry_after
        self._items: deque[GenerationRequest] = deque()
        self._changed = asyncio.Event()
        self._closed = False
        self._on_depth = on_depth  # told the depth after every change (the queue_depth gauge)

    def _depth_changed(self) -> None:
        if self._on_depth is not None:
            self._on_depth(len(self._items))

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put_nowait(self, request: GenerationRequest) -> None:
        """Accept the request or refuse it at once (OVERLOADED / SHUTTING_DOWN)."""
        if self._closed:
            raise ServiceError(ErrorCode.SHUTTING_DOWN, "the server is shutting down", retry_after=5)
        if len(self._items) >= self.maxsize:
            raise ServiceError(
                ErrorCode.OVERLOADED,
                f"the request queue is full ({self.maxsize} waiting); retry later",
                retry_after=self.retry_after,
            )
        self._items.append(request)
        self._depth_changed()
        self._changed.set()

    def remove(self, request: GenerationRequest) -> bool:
        """Take a request out before a worker has it (its client went away); True if it was waiting."""
        try:
            self._items.remove(request)
        except ValueError:
            return False
        self._depth_changed()
        return True

    def oldest(self) -> GenerationRequest | None:
        return self._items[0] if self._items else None

    def take(self, accept: Callable[[GenerationRequest], bool], limit: int) -> list[GenerationRequest]:
        """Up to `limit` waiting requests that `accept` admits, oldest first, without waiting."""
        taken: list[GenerationRequest] = []
        for request in list(self._items):
            if len(taken) >= limit:
                break
            if accept(request):
                self._items.remove(request)
                taken.append(request)
        if taken:
            self._depth_changed()
        return taken

    def waiting(self, accept: Callable[[GenerationRequest], bool]) -> tuple[int, float | None]:
        """How many waiting requests `accept` admits, and when the oldest of them was queued."""
        matching = [r for r in self._items if accept(r)]
        return len(matching), (matching[0].enqueued_at if matching else None)

    def expire(self, now: float) -> list[GenerationRequest]:
        """Take out the requests whose deadline passed while they waited."""
        expired = [r for r in self._items if r.expired(now)]
        for request in expired:
            self._items.remove(request)
        if expired:
            self._depth_changed()
        return expired

    async def until_waiting(self, accept: Callable[[GenerationRequest], bool], count: int) -> None:
        """Return once `count` requests that `accept` takes are waiting, or the queue is closed."""
        while self.waiting(accept)[0] < count and not self._closed:
            self._changed.clear()
            await self._changed.wait()

    async def get(self, prefer: Callable[[GenerationRequest], bool] | None = None) -> GenerationRequest | None:
        """The oldest request `prefer` likes, else the oldest; None once the queue is closed and empty."""
        while not self._items:
            if self._closed:
                return None
            self._changed.clear()
            await self._changed.wait()
        chosen = next((r for r in self._items if prefer(r)), self._items[0]) if prefer else self._items[0]
        self._items.remove(chosen)
        self._depth_changed()
        return chosen

    def close(self) -> None:
        """Stop accepting; workers drain what is waiting and then see None."""
        self._closed = True
        self._changed.set()

    def drain(self) -> list[GenerationRequest]:
        items = list(self._items)
        self._items.clear()
        self._depth_changed()
        return items
