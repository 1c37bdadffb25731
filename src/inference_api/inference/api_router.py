"""POST /infer."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from inference_api.api.deps import EngineDep, GroundingDep
from inference_api.api.disconnect import cancel_on_disconnect
from inference_api.api.errors import request_id_of
from inference_api.auth.deps import InferCallerDep
from inference_api.inference.protocol import InferRequest, InferResponse
from inference_api.inference.serving import InferenceService

router = APIRouter(tags=["inference"])


def get_inference(engine: EngineDep, grounding: GroundingDep) -> InferenceService:
    return InferenceService(engine, grounding)


InferenceDep = Annotated[InferenceService, Depends(get_inference)]


@router.post(
    "/infer",
    response_model=InferResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def infer(
    body: InferRequest, request: Request, caller: InferCallerDep, service: InferenceDep
) -> InferResponse | StreamingResponse:
    """Generate a completion for one prompt (Server-Sent Events with `"stream": true`)."""
    arrived = time.monotonic()
    if not body.stream:
        return await cancel_on_disconnect(request, service.infer(body, caller.name, arrived))
    # Admitted before the response starts, so a full queue is still an ordinary 503 with Retry-After.
    prepared = await service.prepare(body, caller.name, arrived)
    await service.submit(prepared)
    return StreamingResponse(
        service.stream(prepared, arrived, request_id_of(request)),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
