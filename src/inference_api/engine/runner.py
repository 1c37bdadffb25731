"""Per-sequence decoding state: which tokens came, what text they release, when the sequence ends.

The forward passes live in `batch.py`; beam search, which cannot share a token-by-token batch, is here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from inference_api.engine.sampling import make_generator
from inference_api.engine.types import FinishReason, GenerationRequest, SamplingParams, TokenLogprob
from inference_api.modeling.cache import LoadedModel


def eos_ids(model: LoadedModel) -> frozenset[int]:
    ids: set[int] = set()
    configured = getattr(model.base.model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif isinstance(configured, list):
        ids.update(configured)
    if model.base.tokenizer.eos_token_id is not None:
        ids.add(model.base.tokenizer.eos_token_id)
    return frozenset(ids)


class TextAssembler:
    """Turns generated token ids into text deltas that never split a character or leak a stop string."""

    def __init__(self, tokenizer: Any, stop: tuple[str, ...]) -> None:
        self._tokenizer = tokenizer
        self._stop = stop
        self._ids: list[int] = []
        self.text = ""  # final text so far (stop string excluded)
        self._sent = 0
        self.stopped = False

    def add(self, token_id: int) -> str:
        self._ids.append(token_id)
        text = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        # An incomplete UTF-8 sequence decodes to U+FFFD: wait for the token that completes it.
        if text.endswith("\ufffd"):
            return ""
        for stop in self._stop:
            at = text.find(stop)
            if at != -1:
                text = text[:at]
                self.stopped = True
        self.text = text
        return self._release(final=self.stopped)

    @property
    def ids(self) -> list[int]:
        """The generated token ids so far (end-of-sequence excluded)."""
        return self._ids

    def finish(self) -> str:
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        end = len(self.text)
        if not final:
            end -= self._held_back()
        delta = self.text[self._sent : end]
        self._sent = max(self._sent, end)
        return delta

    def _held_back(self) -> int:
        """Length of the longest tail of the text that could still grow into a stop string."""
        longest = 0
        for stop in self._stop:
            for size in range(min(len(stop) - 1, len(self.text)), 0, -1):
                if self.text.endswith(stop[:size]):
                    longest = max(longest, size)
                    break
        return longest


@dataclass
class Sequence:
    """One request's decoding state on a worker."""

    request: GenerationRequest
    assembler: TextAssembler
    eos: frozenset[int]
    generator: torch.Generator | None
    last_token: int | None = None
    tokens_generated: int = 0
    finish_reason: FinishReason | None = None
    # Log-probabilities, kept only when the request asked for them: all of them, and those not delivered yet.
    logprobs: list[TokenLogprob] | None = None
    fresh: list[TokenLogprob] = field(default_factory=list)

    @property
    def params(self) -> SamplingParams:
        return self.request.params

    def note_logprob(self, entry: TokenLogprob) -> None:
        if self.logprobs is not None:
            self.logprobs.append(entry)
            self.fresh.append(entry)

    def take_fresh(self) -> tuple[TokenLogprob, ...]:
        fresh, self.fresh = tuple(self.fresh), []
        return fresh


def new_sequence(model: LoadedModel, request: GenerationRequest) -> Sequence:
    base = model.base
    return Sequence(
        request=request,
        assembler=TextAssembler(base.tokenizer, request.params.stop),
        eos=eos_ids(model),
        generator=make_generator(request.params, base.device),
        logprobs=None if request.params.logprobs is None else [],
    )


def advance(seq: Sequence, token: int) -> str:
    """Record the chosen token; returns the text it releases and sets `finish_reason` when done."""
    seq.last_token = token
    grammar = seq.request.grammar
    if grammar is not None and token not in seq.eos and not grammar.accept(token):
        return end_for_grammar(seq)
    if token in seq.eos:
        seq.finish_reason = "stop"
        return seq.assembler.finish()
    seq.tokens_generated += 1
    delta = seq.assembler.add(token)
    if seq.assembler.stopped:
        seq.finish_reason = "stop"
    elif seq.tokens_generated >= seq.params.max_new_tokens:
        seq.finish_reason = "length"
        delta += seq.assembler.finish()
    return delta


def end_for_grammar(seq: Sequence) -> str:
    """The row's grammar cannot go on: it ends alone, with what it had, and says why."""
    seq.finish_reason = "grammar_error"
    return seq.assembler.finish()


def beam_search(model: LoadedModel, request: GenerationRequest) -> tuple[str, int, FinishReason]:
    """Beam search does not fit token-by-token batching; it runs alone as one `generate` call."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Abandoned(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            stop = request.cancelled or request.expired()
            return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

    model.activate()
    base = model.base
    params = request.params
    ids = torch.tensor([request.prompt_ids], device=base.device)
    kwargs: dict[str, Any] = {
        "max_new_tokens": params.max_new_tokens,
        "num_beams": params.num_beams,
        "do_sample": not params.greedy,
        "pad_token_id": base.tokenizer.pad_token_id,
        "eos_token_id": sorted(eos_ids(model)),
        "stopping_criteria": StoppingCriteriaList([_Abandoned()]),
    }
    if not params.greedy:
        kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None)
        if params.seed is not None:
            torch.manual_seed(params.seed)
    with torch.inference_mode():
        out = base.model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    new = out[0, ids.shape[1] :].tolist()
    eos = eos_ids(model)
    ended_on_eos = bool(new) and new[-1] in eos
    tokens = [t for t in new if t not in eos and t != base.tokenizer.pad_token_id]
    assembler = TextAssembler(base.tokenizer, params.stop)
    for token in tokens:
        assembler.add(token)
        if assembler.stopped:
            break
    reason: FinishReason = "stop" if ended_on_eos or assembler.stopped else "length"
    return assembler.text, len(tokens), reason
