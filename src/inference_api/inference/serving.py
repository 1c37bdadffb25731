"""Serving POST /infer: check the request against the limits, encode it, run it through the engine."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from inference_api.api.errors import error_body
from inference_api.engine.service import Engine
from inference_api.engine.types import Completion, GenerationRequest, SamplingParams, TextDelta
from inference_api.errors import ErrorCode, ServiceError
from inference_api.inference.protocol import InferMetadata, InferRequest, InferResponse
from inference_api.modeling.prompt import EncodedPrompt
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
        message = f"must be at most {limit} (MAX_NEW_TOKENS)"
        raise ServiceError(
            ErrorCode.VALIDATION_ERROR,
            f"{field}: {message}",
            details=[{"field": field, "message": message}],
        )


class InferenceService:
    """Single-shot inference on the engine; knows the engine's limits, not HTTP."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def prepare(self, body: InferRequest, arrived: float) -> GenerationRequest:
        engine = self._engine
        limits = engine.limits
        check_max_new_tokens(body.max_new_tokens, limits.max_new_tokens)
        ref = engine.registry.ref(body.base_model, body.adapter_version)
        engine.registry.resolve(ref)
        # Readiness is checked again on admission; checking here spares encoding a doomed request.
        engine.check_accepting()
        if body.raw:
            encoded = await asyncio.to_thread(engine.encoder.encode_raw, ref.base, body.prompt)
        else:
            messages = [{"role": "user", "content": body.prompt}]
            encoded = await asyncio.to_thread(engine.encoder.encode_chat, ref.base, messages)
        check_token_budget(encoded, body.max_new_tokens, limits.max_input_tokens)
        params = SamplingParams(
            max_new_tokens=body.max_new_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            do_sample=body.do_sample,
            num_beams=body.num_beams,
            stop=body.stop_strings(),
            seed=body.seed,
        )
        return GenerationRequest(ref, encoded.ids, params, deadline=arrived + limits.request_timeout)

    def admit(self, request: GenerationRequest) -> None:
        self._engine.admit(request)

    async def infer(self, body: InferRequest, arrived: float) -> InferResponse:
        request = await self.prepare(body, arrived)
        completion = await self._engine.generate(request)
        return InferResponse(result=completion.text, metadata=metadata(completion, arrived))

    async def stream(self, request: GenerationRequest, arrived: float, request_id: str | None) -> AsyncIterator[str]:
        """Server-Sent Events: one `data:` event per text delta, then one with the result and metadata."""
        try:
            async for event in request.events():
                if isinstance(event, TextDelta):
                    yield _sse({"delta": event.text})
                else:
                    yield _sse({"result": event.text, "metadata": metadata(event, arrived).model_dump()})
        except ServiceError as exc:
            yield _sse(error_body(exc, request_id), event="error")
        finally:
            if not request.finished:
                self._engine.cancel(request)


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


def _sse(payload: object, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(payload, ensure_ascii=False)}\n\n"
