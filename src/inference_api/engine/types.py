"""What goes into the engine and what comes out of it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from inference_api.engine.grammar import GrammarSpec, RowGrammar
from inference_api.errors import ErrorCode, ServiceError
from inference_api.modeling.registry import ModelRef
from inference_api.observability.context import RequestRecord, current_record

# "grammar_error": the row's grammar could not go on (it ended alone; the batch went on).
FinishReason = Literal["stop", "length", "grammar_error"]


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    do_sample: bool = False
    num_beams: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # With a grammar: near the end of the budget, allow only the way to close what is open (engine/grammar.py).
    close_within_budget: bool = True
    # None: no log-probabilities; k >= 0: each chosen token's, with the k likeliest alternatives.
    logprobs: int | None = None
    # Logit processors, each applied only to the rows that set it (engine/sampling.py, `adjust`).
    presence_penalty: float = 0.0  # OpenAI: minus this for each token already generated
    frequency_penalty: float = 0.0  # OpenAI: minus this times the token's count in the generated text
    repetition_penalty: float = 1.0  # transformers': over the prompt and the generated tokens
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)
    min_tokens: int = 0  # end-of-sequence masked until this many tokens were generated

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0.0

    @property
    def adjusts(self) -> bool:
        """Whether the row's logits are processed before choosing (penalties, bias, min_tokens)."""
        return bool(
            self.presence_penalty
            or self.frequency_penalty
            or self.repetition_penalty != 1.0
            or self.logit_bias
            or self.min_tokens
        )


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token with its log-probability under the model (log_softmax of the raw logits, before
    temperature, penalties or a grammar's mask), and the likeliest tokens at that step (id, text, logprob)."""

    id: int
    text: str
    logprob: float
    top: tuple[tuple[int, str, float], ...] = ()


@dataclass(frozen=True)
class TextDelta:
    text: str
    # The tokens this step generated, when the request asked for log-probabilities (the text may lag behind them).
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: FinishReason
    model: ModelRef
    prompt_tokens: int
    tokens_generated: int
    queue_time: float
    generation_time: float
    cached: bool = False  # answered from the response cache (generation/cache.py), not generated
    logprobs: tuple[TokenLogprob, ...] | None = None  # every generated token's, when asked for


@dataclass(frozen=True)
class Failure:
    error: ServiceError


Event = TextDelta | Completion | Failure


@dataclass(eq=False)
class GenerationRequest:
    """One request's journey through the engine; its events reach the caller through an asyncio queue."""

    model: ModelRef
    prompt_ids: list[int]
    params: SamplingParams
    deadline: float | None = None  # time.monotonic() value
    owner: str | None = None  # the API key's name, for its token budget; None: nobody's budget
    # Leading prompt tokens that other prompts share (a chat template's system block): their keys and
    # values are computed once per model and reused (modeling/prefix.py). 0: none.
    shared_prefix: int = 0
    # What the output must match (response_format, guided_*, tools): masks the row's logits; None: free.
    grammar: RowGrammar | None = field(default=None, repr=False)
    # What the output must match, for a backend that constrains it itself (an upstream's structured outputs).
    structured: GrammarSpec | None = None
    # What keeps related requests on one upstream replica (a chat session's id); None: any replica.
    affinity: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    enqueued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    cancelled: bool = False
    # The HTTP request this generation serves (None outside one), for its access line and metrics.
    record: RequestRecord | None = field(default_factory=current_record.get, repr=False)
    on_finish: Callable[[GenerationRequest, Completion | Failure], None] | None = field(default=None, repr=False)
    tokens_delivered: int = 0  # tokens the worker has handed over so far, for time-to-first/inter-token latency
    last_token_at: float | None = None
    _events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue, repr=False)
    _finished: bool = False
    _on_settle: list[Callable[[int], None]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.record is not None:
            self.record.note_model(self.model.base, self.model.version)

    @property
    def finished(self) -> bool:
        return self._finished

    def expired(self, now: float | None = None) -> bool:
        return self.deadline is not None and (now or time.monotonic()) >= self.deadline

    def emit(self, event: Event) -> None:
        """Deliver an event to the caller (event loop only); nothing is delivered after the last one."""
        if self._finished:
            return
        if isinstance(event, Completion | Failure):
            self._finished = True
            if self.on_finish is not None:
                self.on_finish(self, event)
        self._events.put_nowait(event)
        if isinstance(event, Completion):
            self.settle(event.tokens_generated)
        elif isinstance(event, Failure):
            self.settle(0)

    def on_settle(self, callback: Callable[[int], None]) -> None:
        """Call `callback(tokens_generated)` once when the request ends (0 when it failed or was cancelled)."""
        self._on_settle.append(callback)

    def settle(self, tokens_generated: int) -> None:
        callbacks, self._on_settle = self._on_settle, []
        for callback in callbacks:
            callback(tokens_generated)

    def fail(self, code: ErrorCode, message: str) -> None:
        self.emit(Failure(ServiceError(code, message)))

    async def events(self) -> AsyncIterator[TextDelta | Completion]:
        """Text deltas then the completion; a failure is raised as its ServiceError."""
        while True:
            event = await self._events.get()
            if isinstance(event, Failure):
                raise event.error
            yield event
            if isinstance(event, Completion):
                return

    async def result(self) -> Completion:
        async for event in self.events():
            if isinstance(event, Completion):
                return event
        raise AssertionError("event stream ended without a completion")


class TokenBudget(Protocol):
    """Who may spend generated tokens: reserves a request's `max_new_tokens` for its owner before it is
    queued (raising RATE_LIMITED when over budget) and registers, through `on_settle`, what to do
    with the tokens actually generated."""

    async def reserve(self, request: GenerationRequest) -> None: ...

    async def check(self, owner: str, amount: int) -> None:
        """Raise what `reserve` would raise for `amount` tokens now, reserving nothing."""
