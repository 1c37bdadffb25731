"""What each backend promises beyond the shared contract: files, keys, restarts, crashed lock holders."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from inference_api.chat import Message, SessionStore, open_session_store
from inference_api.chat.availability import GuardedSessionStore
from inference_api.chat.redis_store import RedisSessionStore
from inference_api.chat.sqlite_store import SCHEMA_VERSION, SqliteSessionStore
from inference_api.errors import ErrorCode, ServiceError

from .conftest import Backend, RedisServer


async def test_factory_opens_sqlite_under_the_data_dir_by_default(tmp_path: Path) -> None:
    data_dir = tmp_path / "data" / "nested"
    store = await open_session_store(data_dir, None)
    try:
        assert isinstance(store, SqliteSessionStore)
        session = await store.create("alice")
        assert (data_dir / "sessions.sqlite3").is_file()
    finally:
        await store.close()
    with sqlite3.connect(data_dir / "sessions.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT id FROM sessions").fetchall() == [(session.id,)]


async def test_factory_opens_redis_when_given_a_url(redis_server: RedisServer, tmp_path: Path) -> None:
    store = await open_session_store(tmp_path, redis_server.url)
    try:
        assert isinstance(store, GuardedSessionStore) and isinstance(store.inner, RedisSessionStore)
        session = await store.create("factory-test")
        assert (await store.get("factory-test", session.id)).id == session.id
        await store.delete("factory-test", session.id)
    finally:
        await store.close()
    assert not (tmp_path / "sessions.sqlite3").exists()


async def test_factory_fails_at_once_on_an_unreachable_redis(tmp_path: Path) -> None:
    with pytest.raises(Exception, match=r"(?i)connect"):
        await open_session_store(tmp_path, "redis://127.0.0.1:1/0")


async def test_sqlite_refuses_a_file_from_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "sessions.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(RuntimeError, match="newer"):
        await SqliteSessionStore.open(path)


async def test_redis_keys_are_namespaced_and_listing_uses_the_owner_index(redis_server: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    store = RedisSessionStore(client, prefix="layout-test")
    try:
        session = await store.create("team:a", messages=[Message(role="user", content="hi")])
        keys = sorted(await client.keys("layout-test:*"))
        assert keys == sorted(
            [
                f"layout-test:session:team:a:{session.id}",
                f"layout-test:messages:team:a:{session.id}",
                "layout-test:owner:team:a",
                "layout-test:sessions",
            ]
        )
        assert await client.zrange("layout-test:owner:team:a", 0, -1) == [session.id]
        assert await client.zrange("layout-test:sessions", 0, -1) == [f"team:a:{session.id}"]
        # An owner whose name looks like another's key prefix still sees only its own sessions.
        assert await store.list("team") == []
        await store.delete("team:a", session.id)
        assert await client.keys("layout-test:*") == []
    finally:
        await client.aclose()


async def test_redis_sessions_survive_a_server_restart(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", persistent=True)
    server.start()
    try:
        store = await RedisSessionStore.connect(server.url)
        session = await store.create("alice", system_prompt="sys", messages=[Message(role="user", content="hi")])
        await store.close()
        server.stop()
        server.start()
        reopened = await RedisSessionStore.connect(server.url)
        try:
            assert await reopened.get("alice", session.id) == session
            assert await reopened.count() == 1
        finally:
            await reopened.close()
    finally:
        server.stop()


def test_redis_tests_fail_rather_than_skip_without_redis_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match="redis-server is not installed"):
        RedisServer(tmp_path)


async def plant_dead_holder(backend: Backend, store: SessionStore, owner: str, session_id: str, ttl: float) -> None:
    """A lease as a process that crashed mid-turn leaves it: held, never renewed, never released."""
    if isinstance(store, SqliteSessionStore):
        with sqlite3.connect(store.path) as db:
            db.execute(
                "INSERT INTO session_locks (owner, session_id, token, expires_at) VALUES (?, ?, 'dead', ?)",
                (owner, session_id, time.time() + ttl),
            )
    else:
        assert backend.redis_url is not None
        client = aioredis.Redis.from_url(backend.redis_url)
        try:
            await client.set(f"{backend.prefix}:lock:{owner}:{session_id}", "dead", px=int(ttl * 1000))
        finally:
            await client.aclose()


async def test_a_crashed_holders_lock_frees_itself_when_its_lease_runs_out(backend: Backend) -> None:
    store = await backend.open()
    session = await store.create("alice")
    await plant_dead_holder(backend, store, "alice", session.id, ttl=0.4)

    with pytest.raises(ServiceError) as caught:
        async with store.lock("alice", session.id, wait=0.1):
            pass
    assert caught.value.code == ErrorCode.TIMEOUT

    started = time.monotonic()
    async with store.lock("alice", session.id, wait=2) as held:
        assert held.id == session.id
    assert time.monotonic() - started < 1.5


async def test_stores_used_from_many_tasks_at_once_stay_consistent(backend: Backend) -> None:
    stores = [await backend.open() for _ in range(3)]
    sessions = [await stores[0].create(f"owner-{i}") for i in range(3)]

    async def churn(n: int) -> None:
        store = stores[n % 3]
        session = sessions[n % 3]
        await store.append(session.owner, session.id, [Message(role="user", content=str(n))])
        await store.list(session.owner)
        await store.count()

    await asyncio.gather(*(churn(n) for n in range(30)))
    for session in sessions:
        got = await stores[1].get(session.owner, session.id)
        assert len(got.messages) == 10
