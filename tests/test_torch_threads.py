"""Tensor work off the worker's thread leaves no thread (and so no OpenMP team) behind."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest
import torch

from inference_api.torch_threads import in_passing_thread


def thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


async def settled_count(expected: int, seconds: float = 5.0) -> int:
    deadline = time.monotonic() + seconds
    # Thread exits signal nothing to wait on: poll.
    while (count := thread_count()) != expected and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    return count


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc")
async def test_parallel_tensor_work_leaves_no_thread_behind() -> None:
    loop_thread = threading.get_ident()
    big = torch.ones(1_000_000)
    before = thread_count()

    def work() -> tuple[float, int]:
        # An elementwise op this large is split across torch's OpenMP team, which is created for this thread.
        return float(torch.add(big, big).sum()), threading.get_ident()

    total, ran_on = await in_passing_thread(work)
    assert total == 2_000_000 and ran_on != loop_thread
    assert await settled_count(before) == before


async def test_errors_reach_the_caller() -> None:
    def fail() -> None:
        raise ValueError("bad tensor")

    with pytest.raises(ValueError, match="bad tensor"):
        await in_passing_thread(fail)
