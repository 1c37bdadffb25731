"""What a chat session is: its messages, its settings and the running summary of folded-away turns."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from inference_api.errors import ErrorCode, ServiceError

Role = Literal["user", "assistant", "system"]

# Clients may name their own sessions (`POST /chat/start` takes a `sessionId`). No ':' so that a Redis key
# `...:{owner}:{id}` splits unambiguously at its last colon whatever the owner's name holds.
SESSION_ID_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"
_SESSION_ID = re.compile(SESSION_ID_PATTERN)


class Message(BaseModel):
    """One turn of a conversation."""

    role: Role
    content: str
    timestamp: float = Field(default_factory=time.time)
    sources: list[dict[str, Any]] | None = None  # retrieved document chunks the reply drew on
    usage: dict[str, Any] | None = None  # token counts and timings of the generation that wrote it
    response: dict[str, Any] | None = None  # the reply's record as a Responses API answer (id, settings), if it is one


class Session(BaseModel):
    """A whole conversation as stored: settings, the running summary and the messages after it."""

    id: str
    owner: str  # the API key's name; every read and write is scoped to it
    created_at: float
    updated_at: float
    system_prompt: str | None = None
    base_model: str | None = None
    adapter_version: str | None = None
    messages: list[Message] = Field(default_factory=list)
    summary: str | None = None
    summarized_turns: int = 0  # how many early messages `summary` stands in for

    @classmethod
    def begin(
        cls,
        owner: str,
        *,
        session_id: str | None = None,
        system_prompt: str | None = None,
        base_model: str | None = None,
        adapter_version: str | None = None,
        messages: Sequence[Message] = (),
    ) -> Session:
        """A session as every store creates it: a checked client id (or a random one), created and updated now."""
        now = time.time()
        return cls(
            id=new_session_id() if session_id is None else check_session_id(session_id),
            owner=owner,
            created_at=now,
            updated_at=now,
            system_prompt=system_prompt,
            base_model=base_model,
            adapter_version=adapter_version,
            messages=list(messages),
        )


class SessionInfo(BaseModel):
    """A session without its messages, for listings."""

    id: str
    owner: str
    created_at: float
    updated_at: float
    system_prompt: str | None = None
    base_model: str | None = None
    adapter_version: str | None = None
    message_count: int
    summarized_turns: int = 0


class SessionExistsError(ServiceError):
    """`create` was given a session id its owner already uses."""

    def __init__(self, session_id: str) -> None:
        message = "already in use by another of your sessions"
        super().__init__(
            ErrorCode.VALIDATION_ERROR,
            f"session_id: {message}",
            details=[{"field": "session_id", "message": message}],
        )
        self.session_id = session_id


def new_session_id() -> str:
    return uuid.uuid4().hex


def check_session_id(session_id: str) -> str:
    """A client-chosen id, refused unless it matches SESSION_ID_PATTERN."""
    if not _SESSION_ID.match(session_id):
        raise ServiceError.invalid("session_id", "must be 1 to 128 letters, digits, '.', '_' or '-'")
    return session_id


def session_not_found(session_id: str) -> ServiceError:
    # One answer for "unknown" and "someone else's", so ids of other owners cannot be probed.
    return ServiceError(ErrorCode.SESSION_NOT_FOUND, f"session {session_id!r} not found")


def check_branch_point(at_message: int, message_count: int) -> None:
    if not 0 <= at_message <= message_count:
        raise ServiceError.invalid(
            "at_message", f"must be between 0 and {message_count} (the session has {message_count} messages)"
        )


def check_fold(folded: int, message_count: int) -> None:
    if not 0 <= folded <= message_count:
        raise ServiceError.invalid(
            "folded", f"must be between 0 and {message_count} (the session has {message_count} messages)"
        )


def check_truncate(keep: int, message_count: int) -> None:
    if not 0 <= keep <= message_count:
        raise ServiceError.invalid(
            "keep", f"must be between 0 and {message_count} (the session has {message_count} messages)"
        )
