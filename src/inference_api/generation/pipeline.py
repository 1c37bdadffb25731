"""The generation pipeline: every front-end (/infer, chat turns, the OpenAI routes) maps its protocol onto it.

A job takes the same steps whoever asks: the limits checked before anything is encoded; the owner's documents
searched when asked (nothing relevant: a ready answer, said instead of generating); the prompt encoded and held
to the context, never cut; admission to the engine (queue, token quota); then one event stream, which cancels the
generation when its listener stops early. It knows the engine and the documents, not HTTP.

In front of the engine sits the response cache (`generation/cache.py`): a deterministic job whose answer is kept
is answered from it, by `complete` and `events` alike, without being queued.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from inference_api.documents.grounding import NOT_IN_SOURCES, NOTHING_FOUND, Grounding, Grounds
from inference_api.documents.protocol import Source
from inference_api.engine.grammar import GrammarSpec, RowGrammar
from inference_api.engine.service import Engine, EngineLimits
from inference_api.engine.types import Completion, GenerationRequest, SamplingParams, TextDelta
from inference_api.errors import ErrorCode, ServiceError
from inference_api.generation.cache import CachedAnswer, CacheKey, ResponseCache
from inference_api.generation.limits import check_max_new_tokens, check_token_budget, fit_to_context
from inference_api.modeling.prompt import EncodedPrompt, Message
from inference_api.modeling.registry import ModelRef
from inference_api.upstream.backend import UpstreamBackend, structured_outputs

# Builds the prompt, given what was found in the owner's documents (None: documents were not asked for).
Encode = Callable[[Grounds | None], Awaitable[EncodedPrompt]]


@dataclass
class Job:
    """One generation on its way: a request for the engine, or (nothing relevant in the owner's documents) none,
    and the ready answer its events give instead."""

    ref: ModelRef
    request: GenerationRequest | None
    sources: list[Source] | None = None  # None: documents were not asked for
    grounds: Grounds | None = None  # what the sources came from (None: documents were not asked for)
    question: str | None = None  # the question the documents were searched for
    verdict: bool | None = None  # whether the whole answer drew on its sources (set once it is complete)
    looked_up: bool = False  # the response cache was asked (once per job)
    key: CacheKey | None = None  # its response-cache key (None: not cacheable)
    cached: CachedAnswer | None = None  # the kept answer to an identical deterministic job


class GenerationPipeline:
    def __init__(self, engine: Engine, grounding: Grounding, cache: ResponseCache | None = None) -> None:
        self._engine = engine
        self._grounding = grounding
        self._cache = cache

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def limits(self) -> EngineLimits:
        return self._engine.limits

    def check(self, ref: ModelRef, max_new_tokens: int, field: str = "max_new_tokens") -> None:
        """What can be refused before encoding: too many new tokens, an unknown model, an engine not accepting."""
        check_max_new_tokens(max_new_tokens, self.limits.max_new_tokens, field)
        self._engine.registry.resolve(ref)
        # Readiness is checked again on admission; checking here spares encoding a doomed request.
        self._engine.check_accepting()

    async def encode_chat(self, ref: ModelRef, messages: list[Message]) -> EncodedPrompt:
        upstream = self._remote_encoder(ref)
        if upstream is not None:
            return await upstream.encode_chat(ref.base, ref.version, messages)
        return await asyncio.to_thread(self._engine.encoder.encode_chat, ref.base, messages)

    async def encode_raw(self, ref: ModelRef, prompt: str) -> EncodedPrompt:
        upstream = self._remote_encoder(ref)
        if upstream is not None:
            return await upstream.encode_raw(ref.base, ref.version, prompt)
        return await asyncio.to_thread(self._engine.encoder.encode_raw, ref.base, prompt)

    async def encode_ids(self, ref: ModelRef, ids: list[int]) -> EncodedPrompt:
        """A prompt given as token ids, checked against the model's vocabulary."""
        return await asyncio.to_thread(self._engine.encoder.from_ids, ref.base, ids)

    def _remote_encoder(self, ref: ModelRef) -> UpstreamBackend | None:
        """The upstream that encodes `ref`'s prompts (its /tokenize), when no tokenizer folder is named for it here."""
        upstream = self._engine.upstream
        if upstream is not None and upstream.serves(ref.base) and not self._engine.encoder.encodes_here(ref.base):
            return upstream
        return None

    async def job(
        self,
        ref: ModelRef,
        encode: Encode,
        params: SamplingParams,
        arrived: float,
        *,
        owner: str,
        question: str | None = None,
        fit: bool = False,
        grammar: GrammarSpec | None = None,
        affinity: str | None = None,
    ) -> Job:
        """A job for `owner` (whose token budget pays), grounded on the owner's documents when `question` is given.

        `fit`: lower max_new_tokens to the room the prompt leaves (callers that set no maximum of their own).
        `grammar`: what the output must match; one the engine cannot compile is refused here, before the
        documents are searched or anything is queued.
        `affinity`: what keeps related jobs (a chat session's turns) on one upstream replica.
        """
        upstream = self._engine.is_upstream(ref.base)
        if upstream:
            self._check_upstream(params, grammar)
        # An upstream constrains the output itself (its structured outputs); a local row compiles its matcher here.
        constraint = await self.constraint(ref, grammar, params) if grammar is not None and not upstream else None
        grounds = await self._grounding.find(owner, question) if question is not None else None
        if grounds is not None and not grounds.hits:
            return Job(ref, None, grounds.sources(), grounds=grounds, question=question)
        encoded = await encode(grounds)
        sources = grounds.sources() if grounds is not None else None
        job = self.encoded_job(
            ref,
            encoded,
            params,
            arrived,
            owner=owner,
            sources=sources,
            grammar=constraint,
            fit=fit,
            affinity=affinity,
            structured=grammar if upstream else None,
        )
        job.grounds, job.question = grounds, question
        return job

    def _check_upstream(self, params: SamplingParams, grammar: GrammarSpec | None) -> None:
        """What an upstream model cannot take, refused before anything is sent."""
        if grammar is not None:
            try:
                structured_outputs(grammar)
            except ValueError:
                raise ServiceError(ErrorCode.INVALID_GRAMMAR, "the JSON schema is not valid JSON") from None
        if params.num_beams > 1:
            raise ServiceError.invalid("num_beams", "beam search is not available for upstream models")
        if params.logprobs is not None:
            raise ServiceError.invalid("logprobs", "log-probabilities are not passed from upstream models yet")

    async def constraint(self, ref: ModelRef, grammar: GrammarSpec, params: SamplingParams) -> RowGrammar:
        """A row's matcher for `grammar` (compiled off the event loop; validated grammars are remembered)."""
        if params.num_beams > 1:
            raise ServiceError.invalid("num_beams", "beam search cannot be combined with a response format")
        return await asyncio.to_thread(
            self._engine.grammars.row, ref.base, grammar, close_within_budget=params.close_within_budget
        )

    def encoded_job(
        self,
        ref: ModelRef,
        encoded: EncodedPrompt,
        params: SamplingParams,
        arrived: float,
        *,
        owner: str,
        sources: list[Source] | None = None,
        grammar: RowGrammar | None = None,
        fit: bool = False,
        affinity: str | None = None,
        structured: GrammarSpec | None = None,
    ) -> Job:
        """A job for a prompt already encoded (grounded on `sources` when given), held to the limits; its deadline
        counts from `arrived`."""
        if fit:
            params = fit_to_context(params, encoded)
        check_token_budget(encoded, params.max_new_tokens, self.limits.max_input_tokens)
        request = GenerationRequest(
            ref,
            encoded.ids,
            params,
            deadline=arrived + self.limits.request_timeout,
            owner=owner,
            # Sources make each grounded system block unique: nothing to share.
            shared_prefix=0 if sources is not None else encoded.shared_prefix,
            grammar=grammar,
            affinity=affinity,
            structured=structured,
        )
        return Job(ref, request, sources)

    async def chat_job(
        self,
        ref: ModelRef,
        messages: list[Message],
        params: SamplingParams,
        arrived: float,
        *,
        owner: str,
        use_documents: bool = False,
        fit: bool = False,
        grammar: GrammarSpec | None = None,
    ) -> Job:
        """The conversation in the model's chat template; grounded, the sources join its system message."""

        async def encode(grounds: Grounds | None) -> EncodedPrompt:
            return await self.encode_chat(ref, with_sources(messages, grounds) if grounds else messages)

        last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        question = last_user if use_documents else None
        return await self.job(ref, encode, params, arrived, owner=owner, question=question, fit=fit, grammar=grammar)

    async def raw_job(
        self,
        ref: ModelRef,
        prompt: str | list[int],
        params: SamplingParams,
        arrived: float,
        *,
        owner: str,
        fit: bool = False,
        grammar: GrammarSpec | None = None,
    ) -> Job:
        """The prompt as-is, without the chat template (a list: token ids, sent as they are)."""

        async def encode(_: Grounds | None) -> EncodedPrompt:
            if isinstance(prompt, list):
                return await self.encode_ids(ref, prompt)
            return await self.encode_raw(ref, prompt)

        return await self.job(ref, encode, params, arrived, owner=owner, fit=fit, grammar=grammar)

    def choices(self, job: Job, n: int) -> list[Job]:
        """`n` jobs of the job's prompt, each with its own generator (the seed s gives choice i the seed s + i, so all
        n repeat) and its own copy of the grammar's matcher. The engine prefills identical prompts once."""
        jobs = [job]
        first = job.request
        for index in range(1, n):
            if first is None:
                jobs.append(Job(job.ref, None, job.sources, grounds=job.grounds, question=job.question))
                continue
            seed = first.params.seed
            params = replace(first.params, seed=None if seed is None else (seed + index) % 2**63)
            request = GenerationRequest(
                first.model,
                first.prompt_ids,
                params,
                deadline=first.deadline,
                owner=first.owner,
                shared_prefix=first.shared_prefix,
                grammar=first.grammar.copy() if first.grammar is not None else None,
                affinity=first.affinity,
                structured=first.structured,
            )
            jobs.append(Job(job.ref, request, job.sources, grounds=job.grounds, question=job.question))
        return jobs

    async def submit(self, job: Job) -> None:
        """Queue the job, its owner's token budget reserved (refused at once when over it or when the queue is full):
        a streaming front-end calls this before its response starts, so the refusal is still a plain HTTP error.
        A job the response cache answers is not queued."""
        if job.request is not None and self._from_cache(job) is None:
            await self._engine.submit(job.request)

    async def complete(self, job: Job) -> Completion:
        """The whole answer (queued now if it was not submitted yet)."""
        if job.request is None:
            return ready_answer(job.ref)
        cached = self._from_cache(job)
        if cached is not None:
            return self._checked(job, cached.completion)
        completion = await self._engine.generate(job.request)
        self._keep(job, [completion.text], completion)
        return self._checked(job, completion)

    def _checked(self, job: Job, completion: Completion) -> Completion:
        """A grounded answer held to its sources: one that does not draw on them is replaced by the plain
        statement that they do not say (RAG_UNGROUNDED=refuse; streamed answers can only be flagged)."""
        job.verdict = grounded(job, completion.text)
        if job.verdict is False and self._grounding.refuse_ungrounded:
            return replace(completion, text=NOT_IN_SOURCES)
        return completion

    async def events(self, job: Job) -> AsyncIterator[TextDelta | Completion]:
        """A submitted job's text deltas, then its completion; a listener that stops early (the client left)
        cancels the generation in the engine. A failure is raised as its ServiceError."""
        if job.request is None:
            answer = ready_answer(job.ref)
            yield TextDelta(answer.text)
            yield answer
            return
        cached = self._from_cache(job)
        if cached is not None:
            for delta in cached.deltas:
                yield TextDelta(delta)
            yield cached.completion
            return
        request = job.request
        deltas: list[str] = []
        try:
            async for event in request.events():
                if isinstance(event, TextDelta):
                    deltas.append(event.text)
                else:
                    self._keep(job, deltas, event)
                yield event
        finally:
            if not request.finished:
                self._engine.cancel(request)

    def _from_cache(self, job: Job) -> CachedAnswer | None:
        """The kept answer to this job, looked up once (at submit, or at completion when not submitted)."""
        if self._cache is None or job.request is None or job.looked_up:
            return job.cached
        job.looked_up = True
        job.key = self._cache.key(job.request, job.sources)
        if job.key is not None:
            job.cached = self._cache.get(job.key)
        return job.cached

    def _keep(self, job: Job, deltas: list[str], completion: Completion) -> None:
        if self._cache is not None and job.key is not None:
            self._cache.put(job.key, deltas, completion)


def with_sources(messages: list[Message], grounds: Grounds) -> list[Message]:
    """The sources go into the last user message, right before its question (small models follow that layout
    far better than sources in a system message, many turns away from the question)."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last is None:
        return messages
    shown: Message = {"role": "user", "content": grounds.prompt(messages[last]["content"])}
    return [*messages[:last], shown, *messages[last + 1 :]]


def grounded(job: Job, answer: str) -> bool | None:
    """Whether a grounded job's answer draws on its sources (None: documents were not asked for, or nothing
    was found and the answer is the fixed refusal)."""
    if job.verdict is not None:
        return job.verdict
    if job.grounds is None or job.question is None:
        return None
    return job.grounds.grounded(answer, job.question)


def ready_answer(ref: ModelRef) -> Completion:
    """The answer given without generating, when nothing in the owner's documents is relevant enough."""
    return Completion(
        text=NOTHING_FOUND,
        finish_reason="stop",
        model=ref,
        prompt_tokens=0,
        tokens_generated=0,
        queue_time=0.0,
        generation_time=0.0,
    )


def figures(completion: Completion, arrived: float) -> dict[str, Any]:
    """What an answer reports of its generation (/infer's metadata, a chat reply's usage): tokens, finish, whether
    the response cache answered it, times."""
    return {
        "tokens_generated": completion.tokens_generated,
        "prompt_tokens": completion.prompt_tokens,
        "finish_reason": completion.finish_reason,
        "cached": completion.cached,
        "queue_time": round(completion.queue_time, 6),
        "generation_time": round(completion.generation_time, 6),
        "response_time": round(time.monotonic() - arrived, 6),
    }
