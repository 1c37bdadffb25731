"""POST /v1/responses, GET /v1/responses/{id}, DELETE /v1/responses/{id}: OpenAI's Responses API.

Errors here come in OpenAI's shape (`api/errors.py` picks it by the `/v1` prefix). The routes need the `chat`
scope: a stored response is a turn of one of the caller's chat sessions.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from inference_api.api.disconnect import cancel_on_disconnect
from inference_api.api.sse import event_stream
from inference_api.auth.deps import ChatCallerDep
from inference_api.responses.deps import ResponsesDep
from inference_api.responses.protocol import DeletedResponse, ResponseObject, ResponseRequest

router = APIRouter(prefix="/v1/responses", tags=["openai"])

_STREAMS: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}}}}


@router.post("", response_model=ResponseObject, responses=_STREAMS)
async def create_response(
    body: ResponseRequest, request: Request, caller: ChatCallerDep, service: ResponsesDep
) -> ResponseObject | StreamingResponse:
    """Create a response (`previous_response_id` continues a conversation; `"stream": true` for the event stream)."""
    call = await service.prepare(body, caller.name, time.monotonic())
    if body.stream:
        await service.submit(call)  # a full queue or a spent quota is still a plain HTTP error
        return event_stream(service.stream(call))
    return await cancel_on_disconnect(request, service.respond(call))


@router.get("/{response_id}", response_model=ResponseObject)
async def get_response(response_id: str, caller: ChatCallerDep, service: ResponsesDep) -> ResponseObject:
    """A stored response of yours."""
    return await service.get(caller.name, response_id)


@router.delete("/{response_id}", response_model=DeletedResponse)
async def delete_response(response_id: str, caller: ChatCallerDep, service: ResponsesDep) -> DeletedResponse:
    """Delete a stored response of yours (with the turns after it in its conversation)."""
    return await service.delete(caller.name, response_id)
