"""Chat sessions in a SQLite file: the default, for one machine with no other servers.

Every statement runs on one thread of this store's own (stdlib sqlite3 blocks, and a connection wants
one thread), so calls queue in the order they were made. Writes are BEGIN IMMEDIATE transactions:
they take SQLite's write lock up front, which serializes writers across every connection and process
on the file, so an append reads the last position and writes after it with nobody in between.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from inference_api.chat.locks import DEFAULT_LEASE_SECONDS, hold_session
from inference_api.chat.types import (
    Message,
    Session,
    SessionExistsError,
    SessionInfo,
    check_branch_point,
    check_fold,
    check_truncate,
    new_session_id,
    session_not_found,
)
from inference_api.keyed_locks import KeyedLocks

T = TypeVar("T")

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    owner TEXT NOT NULL,
    id TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    system_prompt TEXT,
    base_model TEXT,
    adapter_version TEXT,
    summary TEXT,
    summarized_turns INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (owner, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sessions_by_owner ON sessions (owner, updated_at);
CREATE INDEX IF NOT EXISTS sessions_by_activity ON sessions (updated_at);
CREATE TABLE IF NOT EXISTS messages (
    owner TEXT NOT NULL,
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (owner, session_id, seq),
    FOREIGN KEY (owner, session_id) REFERENCES sessions (owner, id) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS session_locks (
    owner TEXT NOT NULL,
    session_id TEXT NOT NULL,
    token TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (owner, session_id)
) WITHOUT ROWID;
"""
_SESSION_COLUMNS = (
    "id, owner, created_at, updated_at, system_prompt, base_model, adapter_version, summary, summarized_turns"
)


class SqliteSessionStore:
    """Sessions, their messages (one JSON body per row, ordered by `seq`) and turn locks in one file."""

    # The whole-turn lock is a row in `session_locks` rather than a file lock: fcntl record locks belong
    # to the process (two stores in one process would not exclude each other, and closing any descriptor
    # drops them all), flock needs a file per session whose removal races with the next locker, and
    # neither exists on Windows. A row lives in the same file as the sessions, so whoever can see a
    # session sees its lock. The price is a lease: a crashed holder's row blocks the session until it
    # expires (DEFAULT_LEASE_SECONDS), and holders renew it meanwhile.

    def __init__(self, path: Path, *, lease_seconds: float = DEFAULT_LEASE_SECONDS, poll_seconds: float = 0.1) -> None:
        self.path = path
        self._lease_seconds = lease_seconds
        self._poll_seconds = poll_seconds
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="session-store")
        self._conn: sqlite3.Connection | None = None
        self._locks = KeyedLocks()

    @classmethod
    async def open(
        cls, path: Path, *, lease_seconds: float = DEFAULT_LEASE_SECONDS, poll_seconds: float = 0.1
    ) -> SqliteSessionStore:
        """Open (creating the file, its folder and the schema if needed) a store on `path`."""
        store = cls(path, lease_seconds=lease_seconds, poll_seconds=poll_seconds)
        try:
            await store._run(store._open_sync)
        except BaseException:
            store._executor.shutdown(wait=False)
            raise
        return store

    async def close(self) -> None:
        if self._conn is not None:
            await self._run(self._close_sync)
        self._executor.shutdown(wait=True)

    async def create(
        self,
        owner: str,
        *,
        session_id: str | None = None,
        system_prompt: str | None = None,
        base_model: str | None = None,
        adapter_version: str | None = None,
        messages: Sequence[Message] = (),
    ) -> Session:
        session = Session.begin(
            owner,
            session_id=session_id,
            system_prompt=system_prompt,
            base_model=base_model,
            adapter_version=adapter_version,
            messages=messages,
        )
        await self._run(self._insert_sync, session)
        return session

    async def get(self, owner: str, session_id: str) -> Session:
        return await self._run(self._get_sync, owner, session_id)

    async def list(self, owner: str, *, limit: int | None = None) -> builtins.list[SessionInfo]:
        return await self._run(self._list_sync, owner, limit)

    async def delete(self, owner: str, session_id: str) -> None:
        await self._run(self._delete_sync, owner, session_id)

    async def append(self, owner: str, session_id: str, messages: Sequence[Message]) -> Session:
        return await self._run(self._append_sync, owner, session_id, list(messages))

    async def fold(self, owner: str, session_id: str, *, summary: str, folded: int) -> Session:
        return await self._run(self._fold_sync, owner, session_id, summary, folded)

    async def truncate(self, owner: str, session_id: str, *, keep: int) -> Session:
        return await self._run(self._truncate_sync, owner, session_id, keep)

    async def branch(self, owner: str, session_id: str, *, at_message: int) -> Session:
        return await self._run(self._branch_sync, owner, session_id, at_message)

    async def expire(self, idle_seconds: float) -> int:
        return await self._run(self._expire_sync, time.time() - idle_seconds)

    async def count(self) -> int:
        return await self._run(self._count_sync)

    @contextlib.asynccontextmanager
    async def lock(self, owner: str, session_id: str, *, wait: float | None = None) -> AsyncIterator[Session]:
        lease = _RowLease(self, owner, session_id)
        async with hold_session(
            self._locks, f"{owner}:{session_id}", lease, wait=wait, lease_seconds=self._lease_seconds
        ):
            yield await self.get(owner, session_id)

    # Everything below runs on the store's thread.

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))

    def _submit(self, fn: Callable[..., object], *args: Any) -> None:
        """Queue `fn` on the store's thread without waiting: it runs after everything queued before it."""
        with contextlib.suppress(RuntimeError):  # the store was closed meanwhile, and its locks with it
            self._executor.submit(fn, *args)

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the session store is closed")
        return self._conn

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; every write says BEGIN IMMEDIATE itself.
        # timeout: how long a write waits for another process's write lock before "database is locked".
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        try:
            # WAL: readers never block the writer nor wait for it. synchronous=NORMAL is durable across a
            # crash of the process; a power cut may lose the last turns, not corrupt the file.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            with _write(conn):
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise RuntimeError(
                        f"{self.path} holds session schema {version}, newer than this version's {SCHEMA_VERSION}"
                    )
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _insert_sync(self, session: Session) -> None:
        with _write(self._db) as db:
            try:
                db.execute(
                    f"INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        session.id,
                        session.owner,
                        session.created_at,
                        session.updated_at,
                        session.system_prompt,
                        session.base_model,
                        session.adapter_version,
                        session.summary,
                        session.summarized_turns,
                    ),
                )
            except sqlite3.IntegrityError:
                raise SessionExistsError(session.id) from None
            _insert_messages(db, session.owner, session.id, 0, session.messages)

    def _get_sync(self, owner: str, session_id: str) -> Session:
        with _read(self._db) as db:
            return _load(db, owner, session_id)

    def _list_sync(self, owner: str, limit: int | None) -> builtins.list[SessionInfo]:
        rows = self._db.execute(
            f"SELECT {_SESSION_COLUMNS}, (SELECT COUNT(*) FROM messages m WHERE m.owner = s.owner AND"
            " m.session_id = s.id) FROM sessions s WHERE owner = ? ORDER BY updated_at DESC, id LIMIT ?",
            (owner, -1 if limit is None else limit),
        ).fetchall()
        return [SessionInfo(**_settings_of(row), summarized_turns=row[8], message_count=row[9]) for row in rows]

    def _delete_sync(self, owner: str, session_id: str) -> None:
        with _write(self._db) as db:
            # Messages go with it (ON DELETE CASCADE).
            if db.execute("DELETE FROM sessions WHERE owner = ? AND id = ?", (owner, session_id)).rowcount == 0:
                raise session_not_found(session_id)

    def _append_sync(self, owner: str, session_id: str, messages: builtins.list[Message]) -> Session:
        with _write(self._db) as db:
            _require(db, owner, session_id)
            (next_seq,) = db.execute(
                "SELECT COALESCE(MAX(seq) + 1, 0) FROM messages WHERE owner = ? AND session_id = ?",
                (owner, session_id),
            ).fetchone()
            _insert_messages(db, owner, session_id, next_seq, messages)
            _touch(db, owner, session_id)
            return _load(db, owner, session_id)

    def _fold_sync(self, owner: str, session_id: str, summary: str, folded: int) -> Session:
        with _write(self._db) as db:
            _require(db, owner, session_id)
            check_fold(folded, _message_count(db, owner, session_id))
            db.execute(
                "DELETE FROM messages WHERE owner = ? AND session_id = ? AND seq IN"
                " (SELECT seq FROM messages WHERE owner = ? AND session_id = ? ORDER BY seq LIMIT ?)",
                (owner, session_id, owner, session_id, folded),
            )
            db.execute(
                "UPDATE sessions SET summary = ?, summarized_turns = summarized_turns + ? WHERE owner = ? AND id = ?",
                (summary, folded, owner, session_id),
            )
            _touch(db, owner, session_id)
            return _load(db, owner, session_id)

    def _truncate_sync(self, owner: str, session_id: str, keep: int) -> Session:
        with _write(self._db) as db:
            _require(db, owner, session_id)
            check_truncate(keep, _message_count(db, owner, session_id))
            db.execute(
                "DELETE FROM messages WHERE owner = ? AND session_id = ? AND seq NOT IN"
                " (SELECT seq FROM messages WHERE owner = ? AND session_id = ? ORDER BY seq LIMIT ?)",
                (owner, session_id, owner, session_id, keep),
            )
            _touch(db, owner, session_id)
            return _load(db, owner, session_id)

    def _branch_sync(self, owner: str, session_id: str, at_message: int) -> Session:
        with _write(self._db) as db:
            _require(db, owner, session_id)
            check_branch_point(at_message, _message_count(db, owner, session_id))
            new_id = new_session_id()
            now = time.time()
            db.execute(
                f"INSERT INTO sessions ({_SESSION_COLUMNS}) SELECT ?, owner, ?, ?, system_prompt, base_model,"
                " adapter_version, summary, summarized_turns FROM sessions WHERE owner = ? AND id = ?",
                (new_id, now, now, owner, session_id),
            )
            db.execute(
                "INSERT INTO messages (owner, session_id, seq, body) SELECT owner, ?, seq, body FROM messages"
                " WHERE owner = ? AND session_id = ? ORDER BY seq LIMIT ?",
                (new_id, owner, session_id, at_message),
            )
            return _load(db, owner, new_id)

    def _expire_sync(self, cutoff: float) -> int:
        now = time.time()
        with _write(self._db) as db:
            db.execute("DELETE FROM session_locks WHERE expires_at < ?", (now,))
            # A session mid-turn keeps its lock row: it is in use even though its last write is old.
            return db.execute(
                "DELETE FROM sessions WHERE updated_at < ? AND NOT EXISTS (SELECT 1 FROM session_locks l"
                " WHERE l.owner = sessions.owner AND l.session_id = sessions.id)",
                (cutoff,),
            ).rowcount

    def _count_sync(self) -> int:
        (count,) = self._db.execute("SELECT COUNT(*) FROM sessions").fetchone()
        return int(count)

    def _try_lock_sync(self, owner: str, session_id: str, token: str) -> bool:
        now = time.time()
        # One statement, so atomic: take a free row, or one whose holder let its lease run out.
        cursor = self._db.execute(
            "INSERT INTO session_locks (owner, session_id, token, expires_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (owner, session_id) DO UPDATE SET token = excluded.token, expires_at = excluded.expires_at"
            " WHERE session_locks.expires_at < ?",
            (owner, session_id, token, now + self._lease_seconds, now),
        )
        return cursor.rowcount == 1

    def _renew_lock_sync(self, owner: str, session_id: str, token: str) -> bool:
        cursor = self._db.execute(
            "UPDATE session_locks SET expires_at = ? WHERE owner = ? AND session_id = ? AND token = ?",
            (time.time() + self._lease_seconds, owner, session_id, token),
        )
        return cursor.rowcount == 1

    def _unlock_sync(self, owner: str, session_id: str, token: str) -> None:
        if self._conn is not None:
            self._conn.execute(
                "DELETE FROM session_locks WHERE owner = ? AND session_id = ? AND token = ?", (owner, session_id, token)
            )


class _RowLease:
    """A turn lock as a row of `session_locks`, taken by polling (SQLite has no way to wait on a row)."""

    def __init__(self, store: SqliteSessionStore, owner: str, session_id: str) -> None:
        self._store = store
        self._owner = owner
        self._session_id = session_id
        self._token = uuid.uuid4().hex

    async def acquire(self, deadline: float | None) -> bool:
        loop = asyncio.get_running_loop()
        delay = min(0.005, self._store._poll_seconds)
        try:
            while not await self._store._run(self._store._try_lock_sync, self._owner, self._session_id, self._token):
                if deadline is not None and loop.time() + delay > deadline:
                    return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._store._poll_seconds)
        except BaseException:
            # Cancelled while an attempt was on the store's thread: it may have taken the row. The thread
            # runs in order, so an unlock queued now runs after that attempt and frees whatever it took.
            self._store._submit(self._store._unlock_sync, self._owner, self._session_id, self._token)
            raise
        return True

    async def renew(self) -> bool:
        return await self._store._run(self._store._renew_lock_sync, self._owner, self._session_id, self._token)

    async def release(self) -> None:
        await self._store._run(self._store._unlock_sync, self._owner, self._session_id, self._token)


@contextlib.contextmanager
def _write(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    # IMMEDIATE takes the write lock before the first read, so what a write reads cannot change under it.
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        # Also after a failed COMMIT: a transaction left open would make the next BEGIN fail.
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


@contextlib.contextmanager
def _read(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    # One snapshot for the session row and its messages (WAL readers see a fixed point in time).
    db.execute("BEGIN")
    try:
        yield db
    finally:
        db.execute("COMMIT")


def _require(db: sqlite3.Connection, owner: str, session_id: str) -> None:
    if db.execute("SELECT 1 FROM sessions WHERE owner = ? AND id = ?", (owner, session_id)).fetchone() is None:
        raise session_not_found(session_id)


def _touch(db: sqlite3.Connection, owner: str, session_id: str) -> None:
    db.execute("UPDATE sessions SET updated_at = ? WHERE owner = ? AND id = ?", (time.time(), owner, session_id))


def _message_count(db: sqlite3.Connection, owner: str, session_id: str) -> int:
    (count,) = db.execute(
        "SELECT COUNT(*) FROM messages WHERE owner = ? AND session_id = ?", (owner, session_id)
    ).fetchone()
    return int(count)


def _insert_messages(
    db: sqlite3.Connection, owner: str, session_id: str, first_seq: int, messages: Sequence[Message]
) -> None:
    db.executemany(
        "INSERT INTO messages (owner, session_id, seq, body) VALUES (?, ?, ?, ?)",
        [
            (owner, session_id, first_seq + i, message.model_dump_json(exclude_none=True))
            for i, message in enumerate(messages)
        ],
    )


def _load(db: sqlite3.Connection, owner: str, session_id: str) -> Session:
    row = db.execute(
        f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE owner = ? AND id = ?", (owner, session_id)
    ).fetchone()
    if row is None:
        raise session_not_found(session_id)
    bodies = db.execute(
        "SELECT body FROM messages WHERE owner = ? AND session_id = ? ORDER BY seq", (owner, session_id)
    ).fetchall()
    return Session(
        **_settings_of(row),
        summary=row[7],
        summarized_turns=row[8],
        messages=[Message.model_validate_json(body) for (body,) in bodies],
    )


def _settings_of(row: Sequence[Any]) -> dict[str, Any]:
    """The leading `_SESSION_COLUMNS` of a row, as the fields that Session and SessionInfo share."""
    names = ("id", "owner", "created_at", "updated_at", "system_prompt", "base_model", "adapter_version")
    return dict(zip(names, row[: len(names)], strict=True))
