"""The OpenAI-compatible routes on the generation pipeline (the same checks, limits and deadlines as /infer),
answered in OpenAI's shapes."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from inference_api.api.errors import openai_error_body
from inference_api.api.sse import sse
from inference_api.documents.embedding import MODEL_NAME as EMBEDDING_MODEL
from inference_api.documents.lazy import LazyDocuments
from inference_api.engine.types import Completion as EngineCompletion
from inference_api.engine.types import TextDelta
from inference_api.engine.types import TokenLogprob as EngineLogprob
from inference_api.errors import ErrorCode, ServiceError
from inference_api.generation.pipeline import GenerationPipeline, Job, grounded
from inference_api.modeling.prompt import Message
from inference_api.modeling.registry import BASE_VERSION, ModelRef
from inference_api.openai_api.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChatLogprobs,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    Embedding,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
    GenerationFields,
    ModelCard,
    ModelCardList,
    TokenizeRequest,
    TokenizeResponse,
    Usage,
)
from inference_api.openai_api.tools import ToolPlan

OWNER = "inference-api"


def model_id(ref: ModelRef) -> str:
    """A model's OpenAI name: the base model, or `base:version` for an adapter version."""
    return ref.base if ref.version == BASE_VERSION else f"{ref.base}:{ref.version}"


@dataclass
class Call:
    """One completion call on its way through the engine (a job per choice), with what its OpenAI answer will say."""

    kind: str  # "chat" | "text"
    id: str
    created: int
    model: str
    jobs: list[Job]
    include_usage: bool
    logprobs: int | None = None  # None: not asked for; k: with the k likeliest alternatives
    tools: ToolPlan | None = None  # tools in play: the text is read back as calls when it is one

    @property
    def job(self) -> Job:
        return self.jobs[0]


@dataclass
class _Choice:
    """What one choice has sent so far (a completion's text offsets count from its first character)."""

    offset: int = 0


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

    async def tokenize(self, body: TokenizeRequest) -> TokenizeResponse:
        """A prompt's token ids as generation would see them (vLLM's /tokenize, for gateways that encode first)."""
        ref = self._ref(body.model) if body.model else self._pipeline.engine.registry.default
        if body.messages is not None:
            messages: list[Message] = [{"role": m.role, "content": m.content} for m in body.messages]
            encoded = await self._pipeline.encode_chat(ref, messages)
        else:
            assert body.prompt is not None
            encoded = await self._pipeline.encode_raw(ref, body.prompt)
        return TokenizeResponse(count=len(encoded.ids), max_model_len=encoded.context_length, tokens=encoded.ids)

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
        tools = body.tool_plan()
        if tools is not None:
            messages = _with_tools(messages, tools.system_text())
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
        return Call(
            "chat",
            _call_id("chatcmpl"),
            int(time.time()),
            model_id(ref),
            self._pipeline.choices(job, body.n or 1),
            body.include_usage,
            body.logprob_count(),
            tools,
        )

    async def prepare_completion(self, body: CompletionRequest, owner: str, arrived: float) -> Call:
        ref = self._ref(body.model)
        requested = self._check(ref, body)
        limit = requested or self._pipeline.engine.limits.max_new_tokens
        job = await self._pipeline.raw_job(
            ref, body.text(), body.sampling(limit), arrived, owner=owner, fit=requested is None, grammar=body.grammar()
        )
        return Call(
            "text",
            _call_id("cmpl"),
            int(time.time()),
            model_id(ref),
            self._pipeline.choices(job, body.n or 1),
            body.include_usage,
            body.logprob_count(),
        )

    async def submit(self, call: Call) -> None:
        """Queue a streamed call before its response starts: a full queue or an exhausted quota is a plain error
        (and the choices already queued are withdrawn)."""
        submitted: list[Job] = []
        try:
            for job in call.jobs:
                await self._pipeline.submit(job)
                submitted.append(job)
        except BaseException:
            for job in submitted:
                if job.request is not None:
                    self._pipeline.engine.cancel(job.request)
            raise

    async def _run(self, call: Call) -> list[EngineCompletion]:
        """Every choice's completion; one that fails (or a caller that leaves) withdraws the others."""
        tasks = [asyncio.ensure_future(self._pipeline.complete(job)) for job in call.jobs]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()

    async def chat_completion(self, call: Call) -> ChatCompletion:
        dones = await self._run(call)
        choices = []
        for index, done in enumerate(dones):
            calls = call.tools.calls(done.text) if call.tools is not None else None
            choices.append(
                ChatChoice(
                    index=index,
                    message=AssistantMessage(content=None if calls else done.text, tool_calls=calls),
                    finish_reason="tool_calls" if calls else done.finish_reason,
                    logprobs=_chat_logprobs(done.logprobs) if call.logprobs is not None else None,
                    grounded=grounded(call.job, done.text),
                )
            )
        return ChatCompletion(
            id=call.id,
            created=call.created,
            model=call.model,
            choices=choices,
            usage=_usage(dones),
            sources=call.job.sources,
        )

    async def text_completion(self, call: Call) -> Completion:
        dones = await self._run(call)
        choices = [
            CompletionChoice(
                index=index,
                text=done.text,
                finish_reason=done.finish_reason,
                logprobs=_text_logprobs(done.logprobs, _Choice()) if call.logprobs is not None else None,
            )
            for index, done in enumerate(dones)
        ]
        return Completion(id=call.id, created=call.created, model=call.model, choices=choices, usage=_usage(dones))

    async def stream(self, call: Call) -> AsyncIterator[str]:
        """Server-Sent Events as OpenAI sends them: chunks (each naming its choice's `index`), a usage chunk if asked
        for, then `[DONE]`."""
        states = [_Choice() for _ in call.jobs]
        dones: list[EngineCompletion] = []
        try:
            if call.kind == "chat":
                for index in range(len(call.jobs)):
                    yield sse(_chunk(call, index, {"role": "assistant", "content": ""}))
            async for index, event in self._events(call):
                if isinstance(event, TextDelta) and call.tools is not None:
                    continue  # with tools, the answer is known to be text or calls only at its end
                if isinstance(event, TextDelta):
                    logprobs = None
                    if call.logprobs is not None:
                        logprobs = (
                            {"content": _chat_entries(event.logprobs), "refusal": None}
                            if call.kind == "chat"
                            else _text_logprobs(event.logprobs, states[index]).model_dump()
                        )
                    yield sse(_chunk(call, index, event.text, logprobs=logprobs))
                else:
                    dones.append(event)
                    yield self._finish(call, index, event)
            if call.include_usage:
                head = {"id": call.id, "object": _object(call), "created": call.created, "model": call.model}
                yield sse({**head, "choices": [], "usage": _usage(dones).model_dump()})
        except ServiceError as exc:
            # The response has started: the error travels as an event, which the SDK raises as an APIError.
            yield sse(openai_error_body(exc))
            return
        yield "data: [DONE]\n\n"

    async def _events(self, call: Call) -> AsyncIterator[tuple[int, TextDelta | EngineCompletion]]:
        """Every choice's events as they come, each with its choice's index; the first failure is raised, and
        stopping early (or failing) withdraws every choice from the engine."""
        if len(call.jobs) == 1:
            async for event in self._pipeline.events(call.job):
                yield 0, event
            return
        queue: asyncio.Queue[tuple[int, TextDelta | EngineCompletion | ServiceError]] = asyncio.Queue()

        async def pump(index: int, job: Job) -> None:
            try:
                async for event in self._pipeline.events(job):
                    queue.put_nowait((index, event))
            except ServiceError as exc:
                queue.put_nowait((index, exc))

        tasks = [asyncio.create_task(pump(index, job)) for index, job in enumerate(call.jobs)]
        try:
            left = len(tasks)
            while left:
                index, item = await queue.get()
                if isinstance(item, ServiceError):
                    raise item
                if isinstance(item, EngineCompletion):
                    left -= 1
                yield index, item
        finally:
            for task in tasks:
                task.cancel()

    def _finish(self, call: Call, index: int, done: EngineCompletion) -> str:
        """A choice's chunk with its finish reason (and the sources); with tools, first its text or its calls, whole
        (as OpenAI may send a call: in one delta)."""
        events = ""
        finish: str = done.finish_reason
        if call.tools is not None:
            calls = call.tools.calls(done.text)
            if calls:
                finish = "tool_calls"
                deltas = [{"index": i, **c.model_dump()} for i, c in enumerate(calls)]
                events += sse(_chunk(call, index, {"tool_calls": deltas}))
            elif done.text:
                events += sse(_chunk(call, index, done.text))
        chunk = _chunk(call, index, {} if call.kind == "chat" else "", finish)
        if call.job.sources is not None:
            chunk["sources"] = [s.model_dump() for s in call.job.sources]
            chunk["grounded"] = grounded(call.job, done.text)
        return events + sse(chunk)

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


def _with_tools(messages: list[Message], text: str) -> list[Message]:
    """The tools join the system message (after the caller's own, when there is one)."""
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": f"{messages[0]['content']}\n\n{text}"}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def _object(call: Call) -> str:
    return "chat.completion.chunk" if call.kind == "chat" else "text_completion"


def _chunk(
    call: Call,
    index: int,
    delta: str | dict[str, Any],
    finish: str | None = None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, object]:
    if call.kind == "chat":
        content = {"content": delta} if isinstance(delta, str) else delta
        choice: dict[str, object] = {"index": index, "delta": content, "finish_reason": finish, "logprobs": logprobs}
    else:
        choice = {"index": index, "text": delta, "finish_reason": finish, "logprobs": logprobs}
    chunk: dict[str, object] = {
        "id": call.id,
        "object": _object(call),
        "created": call.created,
        "model": call.model,
        "choices": [choice],
    }
    if call.include_usage:
        chunk["usage"] = None  # as OpenAI does: every chunk has the field, only the last one fills it
    return chunk


def _chat_entries(tokens: Sequence[EngineLogprob]) -> list[dict[str, Any]]:
    return [
        {
            "token": token.text,
            "logprob": token.logprob,
            "bytes": list(token.text.encode()),
            "top_logprobs": [
                {"token": text, "logprob": value, "bytes": list(text.encode())} for _, text, value in token.top
            ],
        }
        for token in tokens
    ]


def _chat_logprobs(tokens: Sequence[EngineLogprob] | None) -> ChatLogprobs:
    return ChatLogprobs.model_validate({"content": _chat_entries(tokens or ())})


def _text_logprobs(tokens: Sequence[EngineLogprob] | None, state: _Choice) -> CompletionLogprobs:
    """OpenAI's legacy shape: the tokens, their log-probabilities, the alternatives by text, the text offsets."""
    offsets = []
    for token in tokens or ():
        offsets.append(state.offset)
        state.offset += len(token.text)
    tops = [{text: value for _, text, value in token.top} for token in tokens or ()]
    return CompletionLogprobs(
        tokens=[token.text for token in tokens or ()],
        token_logprobs=[token.logprob for token in tokens or ()],
        top_logprobs=tops if any(tops) else None,
        text_offset=offsets,
    )


def _usage(dones: Sequence[EngineCompletion]) -> Usage:
    """The prompt once, and every choice's generated tokens."""
    prompt = dones[0].prompt_tokens if dones else 0
    generated = sum(done.tokens_generated for done in dones)
    return Usage(prompt_tokens=prompt, completion_tokens=generated, total_tokens=prompt + generated)


def _call_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _model_not_found(name: str) -> ServiceError:
    return ServiceError(
        ErrorCode.MODEL_NOT_FOUND,
        f"The model {name!r} does not exist; GET /v1/models lists them (an adapter is named base:version)",
    )
