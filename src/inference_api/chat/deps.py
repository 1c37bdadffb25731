"""Dependencies of the chat routes."""

from __future__ import annotations

from typing import Annotated, Protocol, cast

from fastapi import Depends, Request

from inference_api.api.state import SettingsDep, app_state
from inference_api.chat.serving import ChatService
from inference_api.chat.store import SessionStore
from inference_api.generation.deps import PipelineDep


class ChatState(Protocol):
    sessions: SessionStore


def get_sessions(request: Request) -> SessionStore:
    return cast(ChatState, app_state(request)).sessions


SessionsDep = Annotated[SessionStore, Depends(get_sessions)]


def get_chat(pipeline: PipelineDep, sessions: SessionsDep, settings: SettingsDep) -> ChatService:
    return ChatService(pipeline, sessions, summary_max_tokens=settings.summary_max_tokens)


ChatDep = Annotated[ChatService, Depends(get_chat)]
