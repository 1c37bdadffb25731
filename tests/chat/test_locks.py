"""The in-process half of the turn lock: per-key asyncio locks that do not pile up."""

from __future__ import annotations

import asyncio

from inference_api.keyed_locks import KeyedLocks


async def test_keyed_locks_queue_in_order_and_are_dropped_when_unused() -> None:
    locks = KeyedLocks()
    order: list[int] = []

    async def turn(n: int) -> None:
        async with locks.hold("s1"):
            order.append(n)
            await asyncio.sleep(0.01)

    await asyncio.gather(*(turn(n) for n in range(5)))

    assert order == [0, 1, 2, 3, 4]
    assert len(locks) == 0


async def test_keyed_locks_of_different_keys_do_not_wait_for_each_other() -> None:
    locks = KeyedLocks()
    async with locks.hold("a"), asyncio.timeout(1), locks.hold("b"):
        assert len(locks) == 2
    assert len(locks) == 0


async def test_a_cancelled_waiter_leaves_no_entry_behind() -> None:
    locks = KeyedLocks()
    async with locks.hold("a"):
        waiter = asyncio.create_task(locks.hold("a").__aenter__())
        await asyncio.sleep(0.01)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
    assert len(locks) == 0
