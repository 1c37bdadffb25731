"""Fixtures for the session store tests: each backend behind one face (redis-server: tests/conftest.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from inference_api.chat.redis_store import RedisSessionStore
from inference_api.chat.sqlite_store import SqliteSessionStore
from inference_api.chat.store import SessionStore
from tests.conftest import RedisServer

__all__ = ["LEASE_SECONDS", "Backend", "RedisServer"]

# Short leases and polls keep the lock tests to fractions of a second.
LEASE_SECONDS = 0.6


@dataclass
class Backend:
    """Opens stores on one body of data: a SQLite file, or a key prefix on a Redis server."""

    name: str
    folder: Path
    redis_url: str | None = None
    prefix: str = ""
    opened: list[SessionStore] = field(default_factory=list)

    async def open(self, *, lease_seconds: float = LEASE_SECONDS) -> SessionStore:
        """Another store on the same data, as a second process or replica would open it."""
        store: SessionStore
        if self.redis_url is None:
            store = await SqliteSessionStore.open(
                self.folder / "sessions.sqlite3", lease_seconds=lease_seconds, poll_seconds=0.02
            )
        else:
            store = await RedisSessionStore.connect(self.redis_url, prefix=self.prefix, lease_seconds=lease_seconds)
        self.opened.append(store)
        return store


@pytest.fixture(params=["sqlite", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        backend = Backend("sqlite", tmp_path)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        backend = Backend("redis", tmp_path, redis_url=server.url, prefix=f"test-{uuid.uuid4().hex[:12]}")
    yield backend
    for store in backend.opened:
        await store.close()


@pytest.fixture
async def store(backend: Backend) -> SessionStore:
    return await backend.open()
