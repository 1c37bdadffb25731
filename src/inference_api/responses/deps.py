"""Dependencies of the /v1/responses routes: the chat service and the session store the turns live in."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from inference_api.chat.deps import ChatDep, SessionsDep
from inference_api.generation.deps import PipelineDep
from inference_api.responses.serving import ResponsesService


def get_responses(pipeline: PipelineDep, chat: ChatDep, sessions: SessionsDep) -> ResponsesService:
    return ResponsesService(pipeline, chat, sessions)


ResponsesDep = Annotated[ResponsesService, Depends(get_responses)]
