"""Serving POST /infer: check the request against the limits, encode it, run it through the engine."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from inference_api.api.errors import error_body
from inference_api.documents.types import SearchHit
from inference_api.engine.service import Engine
from inference_api.engine.types import Completion, GenerationRequest, SamplingParams, TextDelta
from inference_api.errors import ErrorCode, ServiceError
from inference_api.grounding import NOTHING_FOUND, Grounding, grounded_system_prompt, sources_of
from inference_api.inference.protocol import InferMetadata, InferRequest, InferResponse, SamplingFields, Source
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


def default_within_limit(body: SamplingFields, limit: int) -> None:
    """A max_new_tokens the client did not send defaults to at most MAX_NEW_TOKENS: a server configured below the
    default of 128 must not refuse requests that never asked for more (a chat start cannot even send the field)."""
    if "max_new_tokens" not in body.model_fields_set:
        body.max_new_tokens = min(body.max_new_tokens, limit)


def check_max_new_tokens(value: int, limit: int, field: str = "max_new_tokens") -> None:
    if value > limit:
        raise ServiceError.invalid(field, f"must be at most {limit} (MAX_NEW_TOKENS)")


@dataclass
class Prepared:
    """A request ready for the engine, or (no relevant document) the answer that replaces generating."""

    ref: ModelRef
    request: GenerationRequest | None
    sources: list[Source] | None = None


def fit_to_context(params: SamplingParams, encoded: EncodedPrompt) -> SamplingParams:
    """Lower max_new_tokens to the room the prompt leaves in the context (for callers that set no maximum)."""
    room = encoded.context_length - len(encoded.ids)
    return replace(params, max_new_tokens=room) if 0 < room < params.max_new_tokens else params


class InferenceService:
    """Single-shot inference on the engine; knows the engine's limits, not HTTP.

    /infer and the OpenAI-compatible routes both go through `check`, `prepare_chat` / `prepare_raw`,
    `admit` / `generate` and `events`, so limits, deadlines and cancellation are the same for both.
    """

    def __init__(self, engine: Engine, grounding: Grounding) -> None:
        self._engine = engine
        self._grounding = grounding

    @property
    def engine(self) -> Engine:
        return self._engine

    def check(self, ref: ModelRef, max_new_tokens: int, field: str = "max_new_tokens") -> None:
        """What can be refused before encoding: too many new tokens, an unknown model, an engine not accepting."""
        engine = self._engine
        check_max_new_tokens(max_new_tokens, engine.limits.max_new_tokens, field)
        engine.registry.resolve(ref)
        # Readiness is checked again on admission; checking here spares encoding a doomed request.
        engine.check_accepting()

    async def prepare_raw(
        self, ref: ModelRef, prompt: str, params: SamplingParams, arrived: float, *, owner: str, fit: bool = False
    ) -> Prepared:
        """The prompt as-is, without the chat template; `owner` is the key whose token budget pays."""
        encoded = await asyncio.to_thread(self._engine.encoder.encode_raw, ref.base, prompt)
        return Prepared(ref, self._request(ref, encoded, params, arrived, owner, fit))

    async def prepare_chat(
        self,
        ref: ModelRef,
        messages: list[Message],
        params: SamplingParams,
        arrived: float,
        *,
        owner: str,
        use_documents: bool = False,
        fit: bool = False,
    ) -> Prepared:
        """The conversation in the model's chat template, grounded on the owner's documents when asked."""
        sources = None
        if use_documents:
            question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
            hits = await self._grounding.find(owner, question)
            sources = sources_of(hits)
            if not hits:
                return Prepared(ref, None, sources)
            messages = _grounded(messages, hits)
        encoded = await asyncio.to_thread(self._engine.encoder.encode_chat, ref.base, messages)
        if use_documents:  # the sources make each grounded system block unique: nothing to share
            encoded = replace(encoded, shared_prefix=0)
        return Prepared(ref, self._request(ref, encoded, params, arrived, owner, fit), sources)

    def _request(
        self, ref: ModelRef, encoded: EncodedPrompt, params: SamplingParams, arrived: float, owner: str, fit: bool
    ) -> GenerationRequest:
        limits = self._engine.limits
        if fit:
            params = fit_to_context(params, encoded)
        check_token_budget(encoded, params.max_new_tokens, limits.max_input_tokens)
        return GenerationRequest(
            ref,
            encoded.ids,
            params,
            deadline=arrived + limits.request_timeout,
            owner=owner,
            shared_prefix=encoded.shared_prefix,
        )

    async def prepare(self, body: InferRequest, owner: str, arrived: float) -> Prepared:
        if body.raw and body.use_documents:
            raise ServiceError.invalid(
                "use_documents", "cannot be combined with raw: sources go into the chat template"
            )
        default_within_limit(body, self._engine.limits.max_new_tokens)
        ref = self._engine.registry.ref(body.base_model, body.adapter_version)
        self.check(ref, body.max_new_tokens)
        if body.raw:
            return await self.prepare_raw(ref, body.prompt, body.sampling(), arrived, owner=owner)
        messages: list[Message] = [{"role": "user", "content": body.prompt}]
        return await self.prepare_chat(
            ref, messages, body.sampling(), arrived, owner=owner, use_documents=body.use_documents
        )

    async def submit(self, prepared: Prepared) -> None:
        """Queue the request, its owner's token budget reserved (refused at once when over it)."""
        if prepared.request is not None:
            await self._engine.submit(prepared.request)

    async def generate(self, request: GenerationRequest) -> Completion:
        return await self._engine.generate(request)

    async def events(self, request: GenerationRequest) -> AsyncIterator[TextDelta | Completion]:
        """An admitted request's events; a listener that stops early (the client left) cancels it in the engine."""
        try:
            async for event in request.events():
                yield event
        finally:
            if not request.finished:
                self._engine.cancel(request)

    async def infer(self, body: InferRequest, owner: str, arrived: float) -> InferResponse:
        prepared = await self.prepare(body, owner, arrived)
        if prepared.request is None:
            return InferResponse(result=NOTHING_FOUND, metadata=unanswered(prepared.ref, arrived), sources=[])
        completion = await self.generate(prepared.request)
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
            async for event in self.events(request):
                if isinstance(event, TextDelta):
                    yield sse({"delta": event.text})
                else:
                    final: dict[str, object] = {"result": event.text, "metadata": metadata(event, arrived).model_dump()}
                    if sources is not None:
                        final["sources"] = sources
                    yield sse(final)
        except ServiceError as exc:
            yield sse(error_body(exc, request_id), event="error")


def _grounded(messages: list[Message], hits: list[SearchHit]) -> list[Message]:
    """The sources go into the system message, after the caller's own system prompt if there is one."""
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": grounded_system_prompt(hits, messages[0]["content"])}, *messages[1:]]
    return [{"role": "system", "content": grounded_system_prompt(hits)}, *messages]


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
