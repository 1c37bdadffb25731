"""The OpenAI-compatible routes on the generation pipeline (the same checks, limits and deadlines as /infer),
answered in OpenAI's shapes."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from inference_api.api.errors import openai_error_body
from inference_api.api.sse import sse
from inference_api.documents.embedding import MODEL_NAME as EMBEDDING_MODEL
from inference_api.documents.lazy import LazyDocuments
from inference_api.engine.types import Completion as EngineCompletion
from inference_api.engine.types import TextDelta
from inference_api.errors import ErrorCode, ServiceError
from inference_api.generation.pipeline import GenerationPipeline, Job
from inference_api.modeling.prompt import Message
from inference_api.modeling.registry import BASE_VERSION, ModelRef
from inference_api.openai_api.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Embedding,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
    FinishReason,
    GenerationFields,
    ModelCard,
    ModelCardList,
    Usage,
)

OWNER = "inference-api"


def model_id(ref: ModelRef) -> str:
    """A model's OpenAI name: the base model, or `base:version` for an adapter version."""
    return ref.base if ref.version == BASE_VERSION else f"{ref.base}:{ref.version}"


@dataclass
class Call:
    """One completion call on its way through the engine, with what its OpenAI answer will say."""

    kind: str  # "chat" | "text"
    id: str
    created: int
    model: str
    job: Job
    include_usage: bool


class OpenAIService:
    def __init__(self, pipeline: GenerationPipeline, documents: LazyDocuments) -> None:
        self._pipeline = pipeline
        self._documents = documents

    def models(self) -> ModelCardList:
        created = int(self._pipeline.engine.started_at)
        cards = [
            ModelCard(id=model_id(ModelRef(spec.name, version)), created=created, owned_by=OWNER)
            for spec in self._pipeline.engine.registry.specs()
            for version in spec.versions
        ]
        cards.append(ModelCard(id=EMBEDDING_MODEL, created=created, owned_by=OWNER))
        return ModelCardList(data=cards)

    def model(self, name: str) -> ModelCard:
        for card in self.models().data:
            if card.id == name:
                return card
        raise _model_not_found(name)

    def _ref(self, name: str) -> ModelRef:
        base, _, version = name.partition(":")
        ref = ModelRef(base, version or BASE_VERSION)
        try:
            self._pipeline.engine.registry.resolve(ref)
        except ServiceError as exc:
            if exc.code is ErrorCode.MODEL_NOT_FOUND:
                raise _model_not_found(name) from None
            raise
        return ref

    def _check(self, ref: ModelRef, body: GenerationFields) -> int | None:
        """The caller's maximum of new tokens (None: as many as the context leaves, up to MAX_NEW_TOKENS)."""
        requested = body.requested_max_tokens()
        field = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
        self._pipeline.check(ref, requested or 0, field)  # none asked for: nothing to refuse yet
        return requested

    async def prepare_chat(self, body: ChatCompletionRequest, owner: str, arrived: float) -> Call:
        ref = self._ref(body.model)
        requested = self._check(ref, body)
        limit = requested or self._pipeline.engine.limits.max_new_tokens
        messages: list[Message] = [{"role": m.template_role(), "content": m.text()} for m in body.messages]
        job = await self._pipeline.chat_job(
            ref,
            messages,
            body.sampling(limit),
            arrived,
            owner=owner,
            use_documents=body.use_documents,
            fit=requested is None,
            grammar=body.grammar(),
        )
        return Call("chat", _call_id("chatcmpl"), int(time.time()), model_id(ref), job, body.include_usage)

    async def prepare_completion(self, body: CompletionRequest, owner: str, arrived: float) -> Call:
        ref = self._ref(body.model)
        requested = self._check(ref, body)
        limit = requested or self._pipeline.engine.limits.max_new_tokens
        job = await self._pipeline.raw_job(
            ref, body.text(), body.sampling(limit), arrived, owner=owner, fit=requested is None, grammar=body.grammar()
        )
        return Call("text", _call_id("cmpl"), int(time.time()), model_id(ref), job, body.include_usage)

    async def submit(self, call: Call) -> None:
        """Queue a streamed call before its response starts: a full queue or an exhausted quota is a plain error."""
        await self._pipeline.submit(call.job)

    async def _run(self, call: Call) -> tuple[str, FinishReason, Usage]:
        done = await self._pipeline.complete(call.job)
        return done.text, done.finish_reason, _usage(done)

    async def chat_completion(self, call: Call) -> ChatCompletion:
        text, finish, usage = await self._run(call)
        return ChatCompletion(
            id=call.id,
            created=call.created,
            model=call.model,
            choices=[ChatChoice(message=AssistantMessage(content=text), finish_reason=finish)],
            usage=usage,
            sources=call.job.sources,
        )

    async def text_completion(self, call: Call) -> Completion:
        text, finish, usage = await self._run(call)
        return Completion(
            id=call.id,
            created=call.created,
            model=call.model,
            choices=[CompletionChoice(text=text, finish_reason=finish)],
            usage=usage,
        )

    async def stream(self, call: Call) -> AsyncIterator[str]:
        """Server-Sent Events as OpenAI sends them: chunks, a usage chunk if asked for, then `[DONE]`."""
        try:
            if call.kind == "chat":
                yield self._chunk(call, {"role": "assistant", "content": ""})
            async for event in self._pipeline.events(call.job):
                if isinstance(event, TextDelta):
                    yield self._chunk(call, event.text)
                else:
                    yield self._last(call, event)
        except ServiceError as exc:
            # The response has started: the error travels as an event, which the SDK raises as an APIError.
            yield sse(openai_error_body(exc))
            return
        yield "data: [DONE]\n\n"

    def _chunk(self, call: Call, delta: str | dict[str, str], finish: str | None = None) -> str:
        return sse(_chunk(call, delta, finish))

    def _last(self, call: Call, done: EngineCompletion) -> str:
        """The chunk with the finish reason (and the sources), then the usage chunk when asked for."""
        chunk = _chunk(call, {} if call.kind == "chat" else "", done.finish_reason)
        if call.job.sources is not None:
            chunk["sources"] = [s.model_dump() for s in call.job.sources]
        events = sse(chunk)
        if call.include_usage:
            head = {key: chunk[key] for key in ("id", "object", "created", "model")}
            events += sse({**head, "choices": [], "usage": _usage(done).model_dump()})
        return events

    async def embed(self, body: EmbeddingRequest) -> EmbeddingList:
        if body.model != EMBEDDING_MODEL:
            raise _model_not_found(body.model)
        service = await self._documents.get()
        embedder = service.embedder
        if body.dimensions is not None and body.dimensions != embedder.dimensions:
            raise ServiceError.invalid("dimensions", f"{EMBEDDING_MODEL} gives {embedder.dimensions} dimensions only")
        texts = body.texts()
        counts = await asyncio.to_thread(lambda: [service.chunker.count_tokens(text) for text in texts])
        for index, count in enumerate(counts):
            if count > embedder.max_tokens:
                # The model would cut the text silently; refuse it instead, as for generation.
                raise ServiceError(
                    ErrorCode.TOKEN_LIMIT_EXCEEDED,
                    f"input {index} has {count} tokens, over the {embedder.max_tokens} of {EMBEDDING_MODEL}",
                    details=[{"field": "input", "message": "too long"}],
                )
        vectors = await embedder.embed_async(texts)
        data = [
            Embedding(
                index=i,
                embedding=(
                    base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
                    if body.encoding_format == "base64"
                    else vector.tolist()
                ),
            )
            for i, vector in enumerate(vectors)
        ]
        usage = EmbeddingUsage(prompt_tokens=sum(counts), total_tokens=sum(counts))
        return EmbeddingList(data=data, model=EMBEDDING_MODEL, usage=usage)


def _chunk(call: Call, delta: str | dict[str, str], finish: str | None) -> dict[str, object]:
    if call.kind == "chat":
        content = {"content": delta} if isinstance(delta, str) else delta
        choice: dict[str, object] = {"index": 0, "delta": content, "finish_reason": finish, "logprobs": None}
    else:
        choice = {"index": 0, "text": delta, "finish_reason": finish, "logprobs": None}
    chunk: dict[str, object] = {
        "id": call.id,
        "object": "chat.completion.chunk" if call.kind == "chat" else "text_completion",
        "created": call.created,
        "model": call.model,
        "choices": [choice],
    }
    if call.include_usage:
        chunk["usage"] = None  # as OpenAI does: every chunk has the field, only the last one fills it
    return chunk


def _usage(done: EngineCompletion) -> Usage:
    prompt, generated = done.prompt_tokens, done.tokens_generated
    return Usage(prompt_tokens=prompt, completion_tokens=generated, total_tokens=prompt + generated)


def _call_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _model_not_found(name: str) -> ServiceError:
    return ServiceError(
        ErrorCode.MODEL_NOT_FOUND,
        f"The model {name!r} does not exist; GET /v1/models lists them (an adapter is named base:version)",
    )
