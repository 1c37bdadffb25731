"""The bounded request queue: admission control at once, closing, removal, and waiting for work."""

from __future__ import annotations

import asyncio

import pytest

from inference_api.engine.queue import RequestQueue
from inference_api.engine.types import GenerationRequest, SamplingParams
from inference_api.errors import ErrorCode, ServiceError
from inference_api.modeling.registry import ModelRef


def request() -> GenerationRequest:
    return GenerationRequest(ModelRef("tiny"), [1, 2, 3], SamplingParams(max_new_tokens=4))


async def test_requests_come_out_in_order() -> None:
    queue = RequestQueue(maxsize=3)
    first, second = request(), request()
    queue.put_nowait(first)
    queue.put_nowait(second)
    assert len(queue) == 2
    assert await queue.get() is first
    assert queue.take(lambda r: True, 5) == [second]
    assert queue.take(lambda r: True, 5) == []
    assert len(queue) == 0


async def test_a_full_queue_refuses_at_once_with_retry_after() -> None:
    queue = RequestQueue(maxsize=2, retry_after=7)
    queue.put_nowait(request())
    queue.put_nowait(request())
    with pytest.raises(ServiceError) as caught:
        queue.put_nowait(request())
    assert caught.value.code is ErrorCode.OVERLOADED
    assert caught.value.retry_after == 7
    assert caught.value.status == 503
    assert len(queue) == 2  # the refused request was not added
    queue.take(lambda r: True, 1)
    queue.put_nowait(request())  # a taken request frees a slot
    assert len(queue) == 2


async def test_default_retry_after_is_set() -> None:
    queue = RequestQueue(maxsize=1)
    queue.put_nowait(request())
    with pytest.raises(ServiceError) as caught:
        queue.put_nowait(request())
    assert caught.value.retry_after == 1


async def test_close_refuses_new_requests_and_drains_then_ends() -> None:
    queue = RequestQueue(maxsize=4)
    waiting = request()
    queue.put_nowait(waiting)
    queue.close()
    assert queue.closed
    with pytest.raises(ServiceError) as caught:
        queue.put_nowait(request())
    assert caught.value.code is ErrorCode.SHUTTING_DOWN
    assert caught.value.retry_after is not None
    assert len(queue) == 1
    assert await queue.get() is waiting  # what was waiting is still served
    assert await asyncio.wait_for(queue.get(), timeout=1) is None
    assert await asyncio.wait_for(queue.get(), timeout=1) is None


async def test_close_refuses_even_a_full_queue_as_shutting_down() -> None:
    queue = RequestQueue(maxsize=1)
    queue.put_nowait(request())
    queue.close()
    with pytest.raises(ServiceError) as caught:
        queue.put_nowait(request())
    assert caught.value.code is ErrorCode.SHUTTING_DOWN


async def test_remove_frees_the_slot_of_a_waiting_request() -> None:
    queue = RequestQueue(maxsize=2)
    gone, kept = request(), request()
    queue.put_nowait(gone)
    queue.put_nowait(kept)
    with pytest.raises(ServiceError):
        queue.put_nowait(request())
    assert queue.remove(gone) is True
    assert len(queue) == 1
    newcomer = request()
    queue.put_nowait(newcomer)
    assert queue.remove(gone) is False  # not waiting any more
    assert await queue.get() is kept
    assert await queue.get() is newcomer


async def test_remove_of_a_taken_request_is_false() -> None:
    queue = RequestQueue(maxsize=2)
    taken = request()
    queue.put_nowait(taken)
    assert await queue.get() is taken
    assert queue.remove(taken) is False
    assert queue.remove(request()) is False


async def test_get_waits_for_a_put() -> None:
    queue = RequestQueue(maxsize=2)
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0.01)
    assert not getter.done()
    item = request()
    queue.put_nowait(item)
    assert await asyncio.wait_for(getter, timeout=1) is item
    assert len(queue) == 0


async def test_get_waits_then_sees_close() -> None:
    queue = RequestQueue(maxsize=2)
    getters = [asyncio.create_task(queue.get()) for _ in range(2)]
    await asyncio.sleep(0.01)
    assert not any(g.done() for g in getters)
    queue.close()
    assert await asyncio.wait_for(asyncio.gather(*getters), timeout=1) == [None, None]


async def test_several_waiters_each_get_one_request() -> None:
    queue = RequestQueue(maxsize=4)
    getters = [asyncio.create_task(queue.get()) for _ in range(3)]
    await asyncio.sleep(0.01)
    items = [request() for _ in range(3)]
    for item in items:
        queue.put_nowait(item)
    got = await asyncio.wait_for(asyncio.gather(*getters), timeout=1)
    assert sorted(id(g) for g in got) == sorted(id(i) for i in items)


async def test_a_waiter_after_a_removed_request_keeps_waiting() -> None:
    queue = RequestQueue(maxsize=2)
    item = request()
    queue.put_nowait(item)
    queue.remove(item)
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0.01)
    assert not getter.done()
    other = request()
    queue.put_nowait(other)
    assert await asyncio.wait_for(getter, timeout=1) is other


async def test_drain_empties_the_queue() -> None:
    queue = RequestQueue(maxsize=3)
    items = [request(), request()]
    for item in items:
        queue.put_nowait(item)
    assert queue.drain() == items
    assert len(queue) == 0
    assert queue.drain() == []


async def test_take_admits_only_what_the_predicate_accepts_oldest_first() -> None:
    queue = RequestQueue(maxsize=8)
    a1 = GenerationRequest(ModelRef("a"), [1], SamplingParams(max_new_tokens=1))
    b1 = GenerationRequest(ModelRef("b"), [1], SamplingParams(max_new_tokens=1))
    a2 = GenerationRequest(ModelRef("a"), [1], SamplingParams(max_new_tokens=1))
    a3 = GenerationRequest(ModelRef("a"), [1], SamplingParams(max_new_tokens=1))
    for r in (a1, b1, a2, a3):
        queue.put_nowait(r)
    assert queue.take(lambda r: r.model.base == "a", 2) == [a1, a2]
    assert queue.oldest() is b1
    assert len(queue) == 2


async def test_get_prefers_what_the_worker_holds_else_the_oldest() -> None:
    queue = RequestQueue(maxsize=8)
    a = GenerationRequest(ModelRef("a"), [1], SamplingParams(max_new_tokens=1))
    b = GenerationRequest(ModelRef("b"), [1], SamplingParams(max_new_tokens=1))
    queue.put_nowait(a)
    queue.put_nowait(b)
    assert await queue.get(prefer=lambda r: r.model.base == "b") is b
    assert await queue.get(prefer=lambda r: r.model.base == "b") is a


async def test_expire_takes_out_only_requests_past_their_deadline() -> None:
    queue = RequestQueue(maxsize=8)
    late = GenerationRequest(ModelRef("a"), [1], SamplingParams(max_new_tokens=1), deadline=10.0)
    fine = GenerationRequest(ModelRef("a"), [1], SamplingParams(max_new_tokens=1), deadline=100.0)
    never = GenerationRequest(ModelRef("a"), [1], SamplingParams(max_new_tokens=1))
    for r in (late, fine, never):
        queue.put_nowait(r)
    assert queue.expire(now=50.0) == [late]
    assert len(queue) == 2
