"""Where torch's CPU work runs: on a device worker's own thread, or on a thread that ends with the work.

torch's CPU build uses libgomp, which keeps an OpenMP team for every thread that has run a parallel
region, until that thread exits. Once a process holds more OpenMP threads than it has cores, libgomp
stops spinning between parallel regions and puts its threads to sleep after each one, in every team.
On 2 cores one team too many (one tensor operation on the event loop's thread) made batch-1 decode
steps ~2x slower (~20 to ~45 ms) for the rest of the process. So tensor work that cannot go to the
worker's thread (the embedding model, loading it) runs on a thread of its own that then ends, taking
its team along.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


async def in_passing_thread(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run blocking tensor work on a new thread that exits when it is done (even if the caller is cancelled)."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tensor-work")
    try:
        return await asyncio.get_running_loop().run_in_executor(executor, functools.partial(fn, *args, **kwargs))
    finally:
        executor.shutdown(wait=False)
