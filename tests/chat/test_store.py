"""The session store contract, run against both backends (SQLite file and a real Redis server)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from inference_api.chat import Message, Session, SessionExistsError, SessionStore
from inference_api.errors import ErrorCode, ServiceError

from .conftest import LEASE_SECONDS, Backend


def user(text: str) -> Message:
    return Message(role="user", content=text)


def assistant(text: str) -> Message:
    return Message(role="assistant", content=text)


def contents(session: Session) -> list[str]:
    return [m.content for m in session.messages]


async def test_create_then_get_round_trips_every_field(store: SessionStore) -> None:
    first = Message(role="system", content="be brief", timestamp=1.5)
    reply = Message(
        role="assistant",
        content="Paris.",
        sources=[{"document_id": "d1", "chunk": 3, "score": 0.25}],
        usage={"prompt_tokens": 12, "tokens_generated": 2, "generation_time": 0.5},
    )
    created = await store.create(
        "alice",
        system_prompt="You are terse.",
        base_model="smollm2-135m-instruct",
        adapter_version="support-v1",
        messages=[first, user("capital of France?"), reply],
    )
    assert created.owner == "alice" and created.summary is None and created.summarized_turns == 0

    got = await store.get("alice", created.id)

    assert got == created
    assert got.messages[2].sources == [{"document_id": "d1", "chunk": 3, "score": 0.25}]
    assert got.messages[2].usage == {"prompt_tokens": 12, "tokens_generated": 2, "generation_time": 0.5}
    assert got.messages[0].timestamp == 1.5 and got.messages[1].sources is None


async def test_unknown_and_foreign_sessions_are_not_found(store: SessionStore) -> None:
    mine = await store.create("alice", messages=[user("hi"), assistant("hello")])
    calls: dict[str, Callable[[str, str], Awaitable[object]]] = {
        "get": lambda owner, sid: store.get(owner, sid),
        "append": lambda owner, sid: store.append(owner, sid, [user("x")]),
        "fold": lambda owner, sid: store.fold(owner, sid, summary="s", folded=1),
        "branch": lambda owner, sid: store.branch(owner, sid, at_message=1),
        "delete": lambda owner, sid: store.delete(owner, sid),
    }
    for name, call in calls.items():
        for owner, sid in (("mallory", mine.id), ("alice", "no-such-session")):
            with pytest.raises(ServiceError) as caught:
                await call(owner, sid)
            assert caught.value.code == ErrorCode.SESSION_NOT_FOUND, name
            assert caught.value.status == 404
    with pytest.raises(ServiceError) as caught:
        async with store.lock("mallory", mine.id):
            pass
    assert caught.value.code == ErrorCode.SESSION_NOT_FOUND

    assert await store.get("alice", mine.id) == mine  # nothing a stranger did touched it


async def test_list_shows_only_the_owners_sessions_newest_first(store: SessionStore) -> None:
    older = await store.create("alice", base_model="m", messages=[user("1")])
    newer = await store.create("alice", system_prompt="sys")
    await store.create("bob")
    await store.append("alice", older.id, [assistant("2"), user("3")])  # now the most recently updated

    listed = await store.list("alice")

    assert [s.id for s in listed] == [older.id, newer.id]
    assert listed[0].message_count == 3 and listed[0].base_model == "m" and listed[0].owner == "alice"
    assert listed[1].message_count == 0 and listed[1].system_prompt == "sys"
    assert [s.id for s in await store.list("alice", limit=1)] == [older.id]
    assert await store.list("alice", limit=0) == []
    assert await store.list("nobody") == []


async def test_delete_removes_the_session_and_count_follows(store: SessionStore) -> None:
    a = await store.create("alice", messages=[user("hi")])
    b = await store.create("bob")
    assert await store.count() == 2

    await store.delete("alice", a.id)

    assert await store.count() == 1
    assert await store.list("alice") == []
    with pytest.raises(ServiceError) as caught:
        await store.get("alice", a.id)
    assert caught.value.code == ErrorCode.SESSION_NOT_FOUND
    with pytest.raises(ServiceError):
        await store.delete("alice", a.id)
    assert (await store.get("bob", b.id)).id == b.id


async def test_client_chosen_ids_are_per_owner_and_checked(store: SessionStore) -> None:
    mine = await store.create("alice", session_id="my-chat_1.0")
    assert mine.id == "my-chat_1.0"
    with pytest.raises(SessionExistsError) as caught:
        await store.create("alice", session_id="my-chat_1.0")
    assert caught.value.code == ErrorCode.VALIDATION_ERROR
    assert caught.value.details == [{"field": "session_id", "message": "already in use by another of your sessions"}]
    # Another owner's namespace is separate: no clash, and nothing learned about alice's ids.
    theirs = await store.create("bob", session_id="my-chat_1.0", messages=[user("bob's")])
    assert contents(await store.get("alice", mine.id)) == []
    assert contents(await store.get("bob", theirs.id)) == ["bob's"]
    for bad in ("", "a:b", "x" * 129, "sp ace", "../etc"):
        with pytest.raises(ServiceError) as bad_id:
            await store.create("alice", session_id=bad)
        assert bad_id.value.code == ErrorCode.VALIDATION_ERROR, bad


async def test_appends_land_in_order(store: SessionStore) -> None:
    session = await store.create("alice", messages=[user("1")])
    updated = await store.append("alice", session.id, [assistant("2")])
    assert contents(updated) == ["1", "2"] and updated.updated_at >= session.updated_at
    updated = await store.append("alice", session.id, [user("3"), assistant("4")])
    assert contents(updated) == ["1", "2", "3", "4"]
    assert contents(await store.get("alice", session.id)) == ["1", "2", "3", "4"]
    assert [m.role for m in updated.messages] == ["user", "assistant", "user", "assistant"]


def assert_whole_pairs(session: Session, turns: int) -> None:
    """Every turn's question and answer landed, next to each other."""
    texts = contents(session)
    assert len(texts) == 2 * turns
    assert sorted(texts[0::2]) == sorted(f"q{i}" for i in range(turns))
    for question, answer in zip(texts[0::2], texts[1::2], strict=True):
        assert answer == "a" + question[1:]


async def test_concurrent_appends_from_many_tasks_all_land(store: SessionStore) -> None:
    session = await store.create("alice")
    await asyncio.gather(*(store.append("alice", session.id, [user(f"q{i}"), assistant(f"a{i}")]) for i in range(20)))
    assert_whole_pairs(await store.get("alice", session.id), 20)


async def test_concurrent_appends_from_two_store_instances_all_land(backend: Backend) -> None:
    one, two = await backend.open(), await backend.open()
    session = await one.create("alice")
    await asyncio.gather(
        *((one if i % 2 else two).append("alice", session.id, [user(f"q{i}"), assistant(f"a{i}")]) for i in range(20))
    )
    assert_whole_pairs(await two.get("alice", session.id), 20)


async def take_turn(store: SessionStore, session_id: str, n: int) -> int:
    """A chat turn: read the history, "generate" (yielding to the others), append; returns what it saw."""
    async with store.lock("alice", session_id) as session:
        seen = len(session.messages)
        await asyncio.sleep(0.01)
        await store.append("alice", session_id, [user(f"q{n}"), assistant(f"a{n}:saw{seen}")])
        return seen


async def test_turn_lock_serializes_whole_turns_across_tasks_and_instances(backend: Backend) -> None:
    one, two = await backend.open(), await backend.open()
    session = await one.create("alice")

    seen = await asyncio.gather(*(take_turn(one if i % 2 else two, session.id, i) for i in range(6)))

    # Each turn read the history after every earlier turn: nobody generated from a stale history.
    assert sorted(seen) == [0, 2, 4, 6, 8, 10]
    texts = contents(await one.get("alice", session.id))
    assert len(texts) == 12
    assert [t.split(":saw")[1] for t in texts[1::2]] == ["0", "2", "4", "6", "8", "10"]


async def test_turn_lock_wait_times_out_while_another_turn_holds_it(backend: Backend) -> None:
    one, two = await backend.open(), await backend.open()
    session = await one.create("alice")
    async with one.lock("alice", session.id):
        for contender in (one, two):
            with pytest.raises(ServiceError) as caught:
                async with contender.lock("alice", session.id, wait=0.1):
                    pass
            assert caught.value.code == ErrorCode.TIMEOUT
    async with two.lock("alice", session.id, wait=1):  # free again once the holder left
        pass


async def test_turn_lock_is_renewed_while_held_and_freed_on_errors(backend: Backend) -> None:
    one, two = await backend.open(), await backend.open()
    session = await one.create("alice")
    async with one.lock("alice", session.id):
        await asyncio.sleep(LEASE_SECONDS * 2)  # past the first lease: the renewer must have kept it
        with pytest.raises(ServiceError) as caught:
            async with two.lock("alice", session.id, wait=0.1):
                pass
        assert caught.value.code == ErrorCode.TIMEOUT

    with pytest.raises(RuntimeError):
        async with one.lock("alice", session.id):
            raise RuntimeError("generation failed")
    async with two.lock("alice", session.id, wait=1):
        pass


async def test_cancelled_turns_and_waiters_leave_no_lock_behind(backend: Backend) -> None:
    one, two = await backend.open(), await backend.open()
    session = await one.create("alice")

    async def hold_forever(store: SessionStore) -> None:
        async with store.lock("alice", session.id):
            await asyncio.sleep(3600)

    holder = asyncio.create_task(hold_forever(one))
    await asyncio.sleep(0.1)
    waiters = [asyncio.create_task(hold_forever(s)) for s in (one, two)]
    await asyncio.sleep(0.1)
    for task in (*waiters, holder):
        # Again until it ends: redis-py (8.1) now and then loses a cancel that lands mid-command.
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.05)

    # The cancelled holder handed the lease back at once, and no waiter left one behind.
    for store in (two, one):
        async with store.lock("alice", session.id, wait=0.3):
            pass


async def test_branch_copies_the_first_messages_and_leaves_the_original(store: SessionStore) -> None:
    original = await store.create(
        "alice", system_prompt="sys", base_model="m", adapter_version="v", messages=[user("1"), assistant("2")]
    )
    original = await store.append("alice", original.id, [user("3"), assistant("4")])
    original = await store.fold("alice", original.id, summary="talked about 1", folded=1)

    branch = await store.branch("alice", original.id, at_message=2)

    assert branch.id != original.id and branch.owner == "alice"
    assert contents(branch) == ["2", "3"]
    assert (branch.system_prompt, branch.base_model, branch.adapter_version) == ("sys", "m", "v")
    assert (branch.summary, branch.summarized_turns) == ("talked about 1", 1)
    assert await store.get("alice", branch.id) == branch
    assert await store.get("alice", original.id) == original
    # They live apart from now on.
    await store.append("alice", branch.id, [user("branch only")])
    assert contents(await store.get("alice", original.id)) == ["2", "3", "4"]
    assert contents(await store.branch("alice", original.id, at_message=0)) == []
    assert contents(await store.branch("alice", original.id, at_message=3)) == ["2", "3", "4"]
    assert await store.count() == 4


@pytest.mark.parametrize("at_message", [-1, 3, 100])
async def test_branch_out_of_range_names_at_message(store: SessionStore, at_message: int) -> None:
    session = await store.create("alice", messages=[user("1"), assistant("2")])
    with pytest.raises(ServiceError) as caught:
        await store.branch("alice", session.id, at_message=at_message)
    assert caught.value.code == ErrorCode.VALIDATION_ERROR
    assert caught.value.message.startswith("at_message: must be between 0 and 2")
    assert caught.value.details is not None and caught.value.details[0]["field"] == "at_message"
    assert await store.count() == 1


async def test_truncate_keeps_the_first_messages_and_appends_follow_them(store: SessionStore) -> None:
    session = await store.create("alice", messages=[user("1"), assistant("2"), user("3"), assistant("4")])

    cut = await store.truncate("alice", session.id, keep=2)
    assert contents(cut) == ["1", "2"]
    assert await store.get("alice", session.id) == cut
    assert contents(await store.append("alice", session.id, [user("5")])) == ["1", "2", "5"]
    assert contents(await store.truncate("alice", session.id, keep=0)) == []
    assert contents(await store.append("alice", session.id, [user("6")])) == ["6"]
    for bad in (-1, 2):
        with pytest.raises(ServiceError) as caught:
            await store.truncate("alice", session.id, keep=bad)
        assert caught.value.details is not None and caught.value.details[0]["field"] == "keep"
    with pytest.raises(ServiceError) as caught:
        await store.truncate("bob", session.id, keep=0)
    assert caught.value.code == ErrorCode.SESSION_NOT_FOUND
    assert contents(await store.get("alice", session.id)) == ["6"]


async def test_fold_replaces_the_summary_and_drops_what_it_covers(store: SessionStore) -> None:
    session = await store.create("alice", messages=[user(str(i)) for i in range(6)])

    folded = await store.fold("alice", session.id, summary="first two", folded=2)
    assert (folded.summary, folded.summarized_turns, contents(folded)) == ("first two", 2, ["2", "3", "4", "5"])
    assert await store.get("alice", session.id) == folded

    folded = await store.fold("alice", session.id, summary="first five", folded=3)
    assert (folded.summary, folded.summarized_turns, contents(folded)) == ("first five", 5, ["5"])
    folded = await store.fold("alice", session.id, summary="all six", folded=1)
    assert (folded.summarized_turns, contents(folded)) == (6, [])
    appended = await store.append("alice", session.id, [user("6")])
    assert contents(appended) == ["6"] and appended.summary == "all six"
    info = (await store.list("alice"))[0]
    assert (info.message_count, info.summarized_turns) == (1, 6)

    for bad in (-1, 2):
        with pytest.raises(ServiceError) as caught:
            await store.fold("alice", session.id, summary="x", folded=bad)
        assert caught.value.code == ErrorCode.VALIDATION_ERROR
        assert caught.value.details is not None and caught.value.details[0]["field"] == "folded"
    assert await store.get("alice", session.id) == appended


async def test_fold_racing_an_append_loses_nothing(backend: Backend) -> None:
    one, two = await backend.open(), await backend.open()
    session = await one.create("alice", messages=[user(str(i)) for i in range(4)])
    await asyncio.gather(
        one.fold("alice", session.id, summary="0 and 1", folded=2),
        two.append("alice", session.id, [user("4"), assistant("5")]),
    )
    final = await one.get("alice", session.id)
    assert contents(final) == ["2", "3", "4", "5"] and final.summarized_turns == 2


async def test_expire_removes_only_idle_unlocked_sessions(store: SessionStore) -> None:
    idle = await store.create("alice", messages=[user("old")])
    busy = await store.create("alice")
    kept = await store.create("bob")
    await asyncio.sleep(0.3)
    await store.append("bob", kept.id, [user("still here")])

    async with store.lock("alice", busy.id):  # a turn in progress on an otherwise idle session
        assert await store.expire(0.2) == 1

    assert await store.count() == 2
    assert [s.id for s in await store.list("alice")] == [busy.id]
    with pytest.raises(ServiceError):
        await store.get("alice", idle.id)
    assert contents(await store.get("bob", kept.id)) == ["still here"]
    assert await store.expire(0.2) == 1  # the lock is gone: busy was idle too
    assert await store.expire(3600) == 0
    assert await store.count() == 1


async def test_sessions_survive_reopening_the_store(backend: Backend) -> None:
    store = await backend.open()
    session = await store.create("alice", system_prompt="sys", messages=[user("hello")])
    session = await store.append("alice", session.id, [assistant("hi there")])
    await store.close()

    reopened = await backend.open()
    assert await reopened.get("alice", session.id) == session
    assert [s.id for s in await reopened.list("alice")] == [session.id]
    assert await reopened.count() == 1


async def test_count_covers_every_owner(store: SessionStore) -> None:
    assert await store.count() == 0
    for owner in ("alice", "alice", "bob"):
        await store.create(owner)
    assert await store.count() == 3
