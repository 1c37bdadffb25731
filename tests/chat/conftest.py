"""Fixtures for the session store tests: a real redis-server of their own, and each backend behind one face."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from inference_api.chat.redis_store import RedisSessionStore
from inference_api.chat.sqlite_store import SqliteSessionStore
from inference_api.chat.store import SessionStore

# Short leases and polls keep the lock tests to fractions of a second.
LEASE_SECONDS = 0.6


class RedisServer:
    """A redis-server process on a free local port, with its files in `folder`."""

    def __init__(self, folder: Path, *, persistent: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            # Fail, never skip: a missing server must not pass as a green Redis backend.
            pytest.fail(
                "redis-server is not installed; the Redis session store tests need it (apt-get install redis-server)"
            )
        self.binary = binary
        self.folder = folder
        self.persistent = persistent
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # another process may take the port between choosing and binding it
            self.port = _free_port()
            persistence = (
                ["--save", "", "--appendonly", "yes"] if self.persistent else ["--save", "", "--appendonly", "no"]
            )
            log = (self.folder / "redis.log").open("ab")
            self.process = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder), *persistence],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            log.close()
            if self._wait_ready():
                return
            self.stop()
        raise RuntimeError(f"redis-server did not start; see {self.folder / 'redis.log'}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()  # SIGTERM: redis-server flushes the append-only file and exits
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def _wait_ready(self) -> bool:
        assert self.process is not None
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except redis.ConnectionError:
                    time.sleep(0.02)
            return False
        finally:
            client.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One server for the whole run; each test keeps to its own key prefix."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


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
