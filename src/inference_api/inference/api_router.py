"""POST /infer."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from inference_api.api.disconnect import cancel_on_disconnect
from inference_api.api.errors import request_id_of
from inference_api.api.sse import event_stream
from inference_api.auth.deps import InferCallerDep
from inference_api.generation.deps import PipelineDep
from inference_api.inference.protocol import InferRequest, InferResponse
from inference_api.inference.serving import InferenceService

router = APIRouter(tags=["inference"])


def get_inference(pipeline: PipelineDep) -> InferenceService:
    return InferenceService(pipeline)


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
    job = await service.prepare(body, caller.name, arrived)
    await service.submit(job)
    return event_stream(service.stream(job, arrived, request_id_of(request)))
