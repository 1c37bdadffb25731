"""Stop work for clients that went away: a non-streaming handler raced against the client's disconnect."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

from fastapi import Request

from inference_api.errors import ErrorCode, ServiceError

T = TypeVar("T")


async def _disconnected(request: Request) -> None:
    # The body has been read by now, so the next message can only be the disconnect (or, after the
    # response went out, the server's own end-of-request notice, by which time the race is over).
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Await `work`, cancelling it (and so dropping its queued or running generation) if the client leaves."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ServiceError(ErrorCode.CANCELLED, "the client disconnected")
    return task.result()
