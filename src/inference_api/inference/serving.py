"""Serving POST /infer: check the request against the limits, encode it, run it through the engine."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from inference_api.api.errors import error_body
from inference_api.engine.service import Engine
from inference_api.engine.types import Completion, GenerationRequest, TextDelta
from inference_api.errors import ErrorCode, ServiceError
from inference_api.grounding import NOTHING_FOUND, Grounding, grounded_system_prompt, sources_of
from inference_api.inference.protocol import InferMetadata, InferRequest, InferResponse, Source
from inference_api.modeling.prompt import EncodedPrompt, Message
from inference_api.modeling.registry import ModelRef


def check_token_budget(encoded: EncodedPrompt, max_new_tokens: int, max_input_tokens: int) -> None:
    """Refuse what does not fit, naming the counts; nothing is ever truncated to make it fit."""
    prompt = len(encoded.ids)
    if prompt > max_input_tokens:
        raise ServiceError(
            ErrorCode.TOKEN_LIMIT_EXCEEDED,
            f"the prompt has {prompt} tokens, over MAX_INPUT_TOKENS={max_input_tokens}",
        )
    total = prompt + max_new_tokens
    if total > encoded.context_length:
        raise ServiceError(
            ErrorCode.TOKEN_LIMIT_EXCEEDED,
            f"the prompt has {prompt} tokens and max_new_tokens is {max_new_tokens}: {total} tokens, over "
            f"the model's context of {encoded.context_length}",
        )


def check_max_new_tokens(value: int, limit: int, field: str = "max_new_tokens") -> None:
    if value > limit:
        raise ServiceError.invalid(field, f"must be at most {limit} (MAX_NEW_TOKENS)")


async def encode_within_budget(
    engine: Engine, ref: ModelRef, messages: list[Message], max_new_tokens: int
) -> EncodedPrompt:
    """Format with the model's chat template off the event loop, and refuse what does not fit."""
    encoded = await asyncio.to_thread(engine.encoder.encode_chat, ref.base, messages)
    check_token_budget(encoded, max_new_tokens, engine.limits.max_input_tokens)
    return encoded


@dataclass
class Prepared:
    """A request ready for the engine, or (no relevant document) the answer that replaces generating."""

    ref: ModelRef
    request: GenerationRequest | None
    sources: list[Source] | None = None


class InferenceService:
    """Single-shot inference on the engine; knows the engine's limits, not HTTP."""

    def __init__(self, engine: Engine, grounding: Grounding) -> None:
        self._engine = engine
        self._grounding = grounding

    async def prepare(self, body: InferRequest, owner: str, arrived: float) -> Prepared:
        engine = self._engine
        check_max_new_tokens(body.max_new_tokens, engine.limits.max_new_tokens)
        if body.raw and body.use_documents:
            raise ServiceError.invalid(
                "use_documents", "cannot be combined with raw: sources go into the chat template"
            )
        ref = engine.registry.ref(body.base_model, body.adapter_version)
        engine.registry.resolve(ref)
        # Readiness is checked again on admission; checking here spares encoding a doomed request.
        engine.check_accepting()
        deadline = arrived + engine.limits.request_timeout
        if body.raw:
            encoded = await asyncio.to_thread(engine.encoder.encode_raw, ref.base, body.prompt)
            check_token_budget(encoded, body.max_new_tokens, engine.limits.max_input_tokens)
            request = GenerationRequest(ref, encoded.ids, body.sampling(), deadline=deadline, owner=owner)
            return Prepared(ref, request)
        messages: list[Message] = [{"role": "user", "content": body.prompt}]
        sources = None
        if body.use_documents:
            hits = await self._grounding.find(owner, body.prompt)
            sources = sources_of(hits)
            if not hits:
                return Prepared(ref, None, sources)
            messages.insert(0, {"role": "system", "content": grounded_system_prompt(hits)})
        encoded = await encode_within_budget(engine, ref, messages, body.max_new_tokens)
        request = GenerationRequest(ref, encoded.ids, body.sampling(), deadline=deadline, owner=owner)
        return Prepared(ref, request, sources)

    async def submit(self, prepared: Prepared) -> None:
        """Queue the request, its owner's token budget reserved (refused at once when over it)."""
        if prepared.request is not None:
            await self._engine.submit(prepared.request)

    async def infer(self, body: InferRequest, owner: str, arrived: float) -> InferResponse:
        prepared = await self.prepare(body, owner, arrived)
        if prepared.request is None:
            return InferResponse(result=NOTHING_FOUND, metadata=unanswered(prepared.ref, arrived), sources=[])
        completion = await self._engine.generate(prepared.request)
        return InferResponse(result=completion.text, metadata=metadata(completion, arrived), sources=prepared.sources)

    async def stream(self, prepared: Prepared, arrived: float, request_id: str | None) -> AsyncIterator[str]:
        """Server-Sent Events: one `data:` event per text delta, then one with the result and metadata."""
        sources = [s.model_dump() for s in prepared.sources] if prepared.sources is not None else None
        request = prepared.request
        if request is None:
            yield sse({"delta": NOTHING_FOUND})
            meta = unanswered(prepared.ref, arrived).model_dump()
            yield sse({"result": NOTHING_FOUND, "metadata": meta, "sources": sources})
            return
        try:
            async for event in request.events():
                if isinstance(event, TextDelta):
                    yield sse({"delta": event.text})
                else:
                    final: dict[str, object] = {"result": event.text, "metadata": metadata(event, arrived).model_dump()}
                    if sources is not None:
                        final["sources"] = sources
                    yield sse(final)
        except ServiceError as exc:
            yield sse(error_body(exc, request_id), event="error")
        finally:
            if not request.finished:
                self._engine.cancel(request)


def unanswered(ref: ModelRef, arrived: float) -> InferMetadata:
    """Metadata of an answer given without generating (nothing relevant was found)."""
    return InferMetadata(
        model=ref.base,
        version=ref.version,
        tokens_generated=0,
        prompt_tokens=0,
        finish_reason="stop",
        queue_time=0.0,
        generation_time=0.0,
        response_time=round(time.monotonic() - arrived, 6),
    )


def metadata(completion: Completion, arrived: float) -> InferMetadata:
    ref: ModelRef = completion.model
    return InferMetadata(
        model=ref.base,
        version=ref.version,
        tokens_generated=completion.tokens_generated,
        prompt_tokens=completion.prompt_tokens,
        finish_reason=completion.finish_reason,
        queue_time=round(completion.queue_time, 6),
        generation_time=round(completion.generation_time, 6),
        response_time=round(time.monotonic() - arrived, 6),
    )


def sse(payload: object, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(payload, ensure_ascii=False)}\n\n"
