"""POST /chat/start, POST /chat/{id}/messages, GET /chat/{id}, GET /chat, DELETE /chat/{id}, POST /chat/{id}/branch."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from inference_api.api.disconnect import cancel_on_disconnect
from inference_api.api.errors import request_id_of
from inference_api.api.sse import event_stream
from inference_api.auth.deps import ChatCallerDep
from inference_api.chat.analysis import Analysis, analyse
from inference_api.chat.deps import ChatDep, SessionsDep
from inference_api.chat.protocol import (
    BranchRequest,
    ChatMessage,
    ChatReply,
    Deleted,
    SendRequest,
    SessionList,
    SessionListItem,
    SessionView,
    StartRequest,
    StartResponse,
)
from inference_api.chat.types import Session
from inference_api.documents.deps import DocumentsDep
from inference_api.documents.embedding import Vectors
from inference_api.generation.deps import EngineDep

router = APIRouter(prefix="/chat", tags=["chat"])


def view(session: Session) -> SessionView:
    return SessionView(
        session_id=session.id,
        created_at=session.created_at,
        updated_at=session.updated_at,
        system_prompt=session.system_prompt,
        base_model=session.base_model,
        adapter_version=session.adapter_version,
        summary=session.summary,
        summarized_turns=session.summarized_turns,
        messages=[ChatMessage.of(m) for m in session.messages],
    )


@router.post("/start", response_model=StartResponse)
async def start(body: StartRequest, request: Request, caller: ChatCallerDep, chat: ChatDep) -> StartResponse:
    """Start a session (or resume one of yours by its sessionId), optionally with a first message."""
    return await cancel_on_disconnect(request, chat.start(caller.name, body, time.monotonic()))


@router.post(
    "/{session_id}/messages", response_model=ChatReply, responses={200: {"content": {"text/event-stream": {}}}}
)
async def send_message(
    session_id: str, body: SendRequest, request: Request, caller: ChatCallerDep, chat: ChatDep, sessions: SessionsDep
) -> ChatReply | StreamingResponse:
    """Send a message and get the reply (Server-Sent Events with `"stream": true`)."""
    arrived = time.monotonic()
    if not body.stream:
        return await cancel_on_disconnect(request, chat.reply(caller.name, session_id, body, arrived))
    await sessions.get(caller.name, session_id)  # an unknown session is a 404, not an error event
    await chat.check_stream(caller.name, body)  # so is a spent token quota a 429
    return event_stream(chat.reply_stream(caller.name, session_id, body, arrived, request_id_of(request)))


@router.get("", response_model=SessionList)
async def list_sessions(caller: ChatCallerDep, sessions: SessionsDep) -> SessionList:
    """List your sessions, most recently used first."""
    infos = await sessions.list(caller.name)
    return SessionList(
        sessions=[
            SessionListItem(
                session_id=i.id,
                created_at=i.created_at,
                updated_at=i.updated_at,
                message_count=i.message_count,
                summarized_turns=i.summarized_turns,
            )
            for i in infos
        ]
    )


@router.get("/{session_id}", response_model=SessionView)
async def get_session(session_id: str, caller: ChatCallerDep, sessions: SessionsDep) -> SessionView:
    """One of your sessions with its messages and summary."""
    return view(await sessions.get(caller.name, session_id))


@router.get("/{session_id}/analysis", response_model=Analysis)
async def analyse_session(
    session_id: str,
    caller: ChatCallerDep,
    sessions: SessionsDep,
    engine: EngineDep,
    documents: DocumentsDep,
    topic_threshold: Annotated[float, Query(ge=-1.0, le=1.0)] = 0.3,
) -> Analysis:
    """Messages and tokens by role, reply times (p50, max), turn lengths, summaries, and how the topic moved
    between your turns (cosine similarity of consecutive user messages in all-MiniLM-L6-v2)."""
    session = await sessions.get(caller.name, session_id)
    base = session.base_model or engine.registry.default.base

    def count(text: str) -> int:
        return len(engine.encoder.encode_raw(base, text).ids)

    async def embed(texts: list[str]) -> Vectors:
        return await (await documents.get()).embedder.embed_async(texts)

    return await analyse(session, count, embed, threshold=topic_threshold)


@router.delete("/{session_id}", response_model=Deleted)
async def delete_session(session_id: str, caller: ChatCallerDep, sessions: SessionsDep) -> Deleted:
    """Delete one of your sessions."""
    await sessions.delete(caller.name, session_id)
    return Deleted(deleted=True)


@router.post("/{session_id}/branch", response_model=SessionView)
async def branch_session(
    session_id: str, body: BranchRequest, caller: ChatCallerDep, sessions: SessionsDep
) -> SessionView:
    """A new session holding the first `at_message` messages of this one; this one is untouched."""
    return view(await sessions.branch(caller.name, session_id, at_message=body.at_message))
