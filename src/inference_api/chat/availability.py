"""Sessions over a store that can be unreachable (Redis): a clear 503 instead of a 500 with a trace.

Chat sessions need their store; nothing else does. While Redis cannot be reached, every session route
answers 503 DEPENDENCY_UNAVAILABLE with Retry-After (the client may retry, the session is not lost),
and generation without sessions (/infer, /v1) is untouched. `available` records what the last call
found, for /ready and /status.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from inference_api.chat.types import Message, Session, SessionInfo
from inference_api.errors import ErrorCode, ServiceError

if TYPE_CHECKING:
    from inference_api.chat.store import SessionStore

logger = logging.getLogger(__name__)

UNREACHABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError)
RETRY_AFTER_SECONDS = 5


def store_unavailable(exc: BaseException | None = None) -> ServiceError:
    detail = f" ({type(exc).__name__})" if exc is not None else ""
    return ServiceError(
        ErrorCode.DEPENDENCY_UNAVAILABLE,
        f"the session store (Redis) cannot be reached{detail}; chat sessions are unavailable for now, "
        "generation without sessions still works",
        retry_after=RETRY_AFTER_SECONDS,
    )


class GuardedSessionStore:
    """A SessionStore that turns "the store cannot be reached" into DEPENDENCY_UNAVAILABLE."""

    def __init__(self, store: SessionStore) -> None:
        self.inner = store
        self.available = True
        self.unavailable_since: float | None = None
        self.last_error: str | None = None

    @contextlib.asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        try:
            yield
        except UNREACHABLE as exc:
            if self.available:
                logger.warning("session store unreachable: %s", type(exc).__name__)
                self.unavailable_since = time.time()
            self.available = False
            self.last_error = type(exc).__name__
            raise store_unavailable(exc) from exc
        if not self.available:
            logger.info("session store reachable again")
        self.available = True
        self.unavailable_since = None

    async def create(
        self,
        owner: str,
        *,
        session_id: str | None = None,
        system_prompt: str | None = None,
        base_model: str | None = None,
        adapter_version: str | None = None,
        messages: Sequence[Message] = (),
    ) -> Session:
        async with self._guard():
            return await self.inner.create(
                owner,
                session_id=session_id,
                system_prompt=system_prompt,
                base_model=base_model,
                adapter_version=adapter_version,
                messages=messages,
            )

    async def get(self, owner: str, session_id: str) -> Session:
        async with self._guard():
            return await self.inner.get(owner, session_id)

    async def list(self, owner: str, *, limit: int | None = None) -> builtins.list[SessionInfo]:
        async with self._guard():
            return await self.inner.list(owner, limit=limit)

    async def delete(self, owner: str, session_id: str) -> None:
        async with self._guard():
            await self.inner.delete(owner, session_id)

    async def append(self, owner: str, session_id: str, messages: Sequence[Message]) -> Session:
        async with self._guard():
            return await self.inner.append(owner, session_id, messages)

    async def fold(self, owner: str, session_id: str, *, summary: str, folded: int) -> Session:
        async with self._guard():
            return await self.inner.fold(owner, session_id, summary=summary, folded=folded)

    async def truncate(self, owner: str, session_id: str, *, keep: int) -> Session:
        async with self._guard():
            return await self.inner.truncate(owner, session_id, keep=keep)

    async def branch(self, owner: str, session_id: str, *, at_message: int) -> Session:
        async with self._guard():
            return await self.inner.branch(owner, session_id, at_message=at_message)

    async def expire(self, idle_seconds: float) -> int:
        async with self._guard():
            return await self.inner.expire(idle_seconds)

    async def count(self) -> int:
        async with self._guard():
            return await self.inner.count()

    @contextlib.asynccontextmanager
    async def lock(self, owner: str, session_id: str, *, wait: float | None = None) -> AsyncIterator[Session]:
        async with self._guard(), self.inner.lock(owner, session_id, wait=wait) as session:
            yield session

    async def close(self) -> None:
        await self.inner.close()
