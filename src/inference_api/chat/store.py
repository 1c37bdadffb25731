"""The session store interface the chat service talks to, and the factory that picks a backend.

Sessions are named per owner (the API key's name): every call takes the owner, and a session of
another owner is indistinguishable from one that does not exist (SESSION_NOT_FOUND).
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Protocol

from inference_api.chat.availability import GuardedSessionStore
from inference_api.chat.redis_store import RedisSessionStore
from inference_api.chat.sqlite_store import SqliteSessionStore
from inference_api.chat.types import Message, Session, SessionInfo

SQLITE_FILE_NAME = "sessions.sqlite3"


class SessionStore(Protocol):
    """Server-side chat sessions, safe to share between tasks, processes and replicas."""

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
        """A new session; `session_id` (checked against SESSION_ID_PATTERN) or a random one."""
        ...

    async def get(self, owner: str, session_id: str) -> Session: ...

    async def list(self, owner: str, *, limit: int | None = None) -> builtins.list[SessionInfo]:
        """The owner's sessions, most recently updated first."""
        ...

    async def delete(self, owner: str, session_id: str) -> None: ...

    async def append(self, owner: str, session_id: str, messages: Sequence[Message]) -> Session:
        """Add messages at the end, in one step: concurrent appends never interleave or overwrite."""
        ...

    async def fold(self, owner: str, session_id: str, *, summary: str, folded: int) -> Session:
        """Replace the summary and drop the `folded` oldest messages it now covers, in one step."""
        ...

    async def truncate(self, owner: str, session_id: str, *, keep: int) -> Session:
        """Keep the first `keep` messages and drop the rest, in one step."""
        ...

    async def branch(self, owner: str, session_id: str, *, at_message: int) -> Session:
        """A new session with the first `at_message` messages (and the summary); the original is untouched."""
        ...

    async def expire(self, idle_seconds: float) -> int:
        """Remove sessions not updated for `idle_seconds` (unless a turn holds them); returns how many."""
        ...

    async def count(self) -> int:
        """Sessions of every owner, for the active_sessions gauge."""
        ...

    def lock(self, owner: str, session_id: str, *, wait: float | None = None) -> AbstractAsyncContextManager[Session]:
        """Hold the session for a whole turn across tasks and processes, yielding it as read under the lock."""
        # Not re-entrant (a task taking it twice waits for itself). Raises SESSION_NOT_FOUND as `get`
        # does, and TIMEOUT when `wait` seconds pass before the lock is free.
        ...

    async def close(self) -> None: ...


async def open_session_store(data_dir: Path, redis_url: str | None) -> SessionStore:
    """Redis when a URL is given (replicas share sessions), else a SQLite file under `data_dir`."""
    if redis_url:
        # Redis can go away while the service runs: session routes then answer 503, not 500.
        return GuardedSessionStore(await RedisSessionStore.connect(redis_url))
    return await SqliteSessionStore.open(data_dir / SQLITE_FILE_NAME)
