"""Per-session locks a chat turn holds from reading the history to appending the reply.

Two layers: an asyncio lock per session inside this process, so that local contenders queue in order
and do not poll, and then a lease shared with every other process on the same store (a row in the
SQLite file, or a Redis lock). A lease expires on its own so that a crashed holder cannot wedge a
session; while held it is renewed in the background, so a long generation keeps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Protocol

from inference_api.errors import ErrorCode, ServiceError
from inference_api.keyed_locks import KeyedLocks

logger = logging.getLogger(__name__)

DEFAULT_LEASE_SECONDS = 30.0


class Lease(Protocol):
    """A lock shared between processes, taken under one token and given up or timed out."""

    async def acquire(self, deadline: float | None) -> bool:
        """Wait until held (True) or the loop's clock passes `deadline` (False); cancelled, hold nothing."""

    async def renew(self) -> bool:
        """Push the expiry out by a whole lease; False once the lease was lost."""

    async def release(self) -> None:
        """Give the lease up; quiet when it was already lost."""


@contextlib.asynccontextmanager
async def hold_session(
    local: KeyedLocks, key: str, lease: Lease, *, wait: float | None, lease_seconds: float
) -> AsyncIterator[None]:
    """Hold `key` in this process and across processes; TIMEOUT when `wait` seconds pass first."""
    deadline = None if wait is None else asyncio.get_running_loop().time() + wait
    busy = ServiceError(ErrorCode.TIMEOUT, f"session is busy with another request (waited {wait} s)")
    async with contextlib.AsyncExitStack() as stack:
        try:
            async with asyncio.timeout_at(deadline):
                await stack.enter_async_context(local.hold(key))
        except TimeoutError:
            raise busy from None
        # The lease gets the deadline rather than a cancellation: redis-py (8.1) can lose a cancel that
        # lands mid-command, and the wait would then outlast `wait`.
        if not await lease.acquire(deadline):
            raise busy
        # Shielded: a task cancelled while leaving must still hand the lease back, not leave it to expire.
        stack.push_async_callback(lambda: asyncio.shield(lease.release()))
        stop = asyncio.Event()
        renewer = asyncio.create_task(_keep_renewed(lease, key, lease_seconds / 3, stop))
        try:
            yield
        finally:
            # Stopped by an event, not cancelled, for the same reason; bounded in case a renewal hangs.
            stop.set()
            _, pending = await asyncio.wait({renewer}, timeout=lease_seconds)
            for task in pending:
                task.cancel()


async def _keep_renewed(lease: Lease, key: str, every: float, stop: asyncio.Event) -> None:
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(every):
                await stop.wait()
        if stop.is_set():
            return
        try:
            if not await lease.renew():
                # Only happens when this process stalled for a whole lease; the turn still finishes, but
                # another replica may have started one on the same session meanwhile.
                logger.warning("lost the lock on chat session %s: it was held past its lease", key)
                return
        except Exception:
            # A store blip: the lease is still good until it expires, so try again at the next beat.
            logger.warning("could not renew the lock on chat session %s", key, exc_info=True)
