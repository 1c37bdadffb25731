"""The OpenAI-compatible API under /v1: chat completions, completions, models, embeddings.

Errors on these routes come in OpenAI's shape (`api/errors.py` picks it by the `/v1` prefix).
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from inference_api.api.disconnect import cancel_on_disconnect
from inference_api.api.sse import event_stream
from inference_api.auth.deps import CallerDep, DocumentsCallerDep, InferCallerDep
from inference_api.documents.deps import DocumentsDep
from inference_api.generation.deps import PipelineDep
from inference_api.openai_api.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
    ModelCard,
    ModelCardList,
    TokenizeRequest,
    TokenizeResponse,
)
from inference_api.openai_api.serving import Call, OpenAIService

router = APIRouter(prefix="/v1", tags=["openai"])
# vLLM's own routes beside /v1 (a gateway in front of this server counts tokens with them).
tokenize_router = APIRouter(tags=["openai"])

_STREAMS: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}}}}


def get_openai(pipeline: PipelineDep, documents: DocumentsDep) -> OpenAIService:
    return OpenAIService(pipeline, documents)


OpenAIDep = Annotated[OpenAIService, Depends(get_openai)]


async def _stream(service: OpenAIService, call: Call) -> StreamingResponse:
    # Submitted before the response starts, so a full queue or a spent quota is an ordinary HTTP error.
    await service.submit(call)
    return event_stream(service.stream(call))


@router.post("/chat/completions", response_model=ChatCompletion, responses=_STREAMS)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, caller: InferCallerDep, service: OpenAIDep
) -> ChatCompletion | StreamingResponse:
    """Create a chat completion (OpenAI's API; `"use_documents": true` answers from the caller's documents)."""
    call = await service.prepare_chat(body, caller.name, time.monotonic())
    if body.stream:
        return await _stream(service, call)
    return await cancel_on_disconnect(request, service.chat_completion(call))


@router.post("/completions", response_model=Completion, responses=_STREAMS)
async def completions(
    body: CompletionRequest, request: Request, caller: InferCallerDep, service: OpenAIDep
) -> Completion | StreamingResponse:
    """Create a completion of a raw prompt, without the chat template (OpenAI's API)."""
    call = await service.prepare_completion(body, caller.name, time.monotonic())
    if body.stream:
        return await _stream(service, call)
    return await cancel_on_disconnect(request, service.text_completion(call))


@router.get("/models", response_model=ModelCardList)
async def list_models(_: CallerDep, service: OpenAIDep) -> ModelCardList:
    """List the models: every base model, each adapter as `base:version`, and the embedding model."""
    return service.models()


@router.get("/models/{model:path}", response_model=ModelCard)
async def get_model(model: str, _: CallerDep, service: OpenAIDep) -> ModelCard:
    """Describe one model."""
    return service.model(model)


@router.post("/embeddings", response_model=EmbeddingList)
async def embeddings(body: EmbeddingRequest, _: DocumentsCallerDep, service: OpenAIDep) -> EmbeddingList:
    """Embed texts with the documents' embedding model (384 dimensions, unit length)."""
    return await service.embed(body)


@tokenize_router.post("/tokenize", response_model=TokenizeResponse)
async def tokenize(body: TokenizeRequest, _: InferCallerDep, service: OpenAIDep) -> TokenizeResponse:
    """Token ids of a prompt, or of messages in the model's chat template (vLLM's /tokenize)."""
    return await service.tokenize(body)
