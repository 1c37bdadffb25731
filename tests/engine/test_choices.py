"""n choices of one prompt: the batch prefills identical prompts once and copies the rows; each row then decodes on
its own generator, exactly as it would alone. And the logit processors, applied only to the rows that ask."""

from __future__ import annotations

import pytest
import torch

from inference_api.engine.batch import DecodeBatch
from inference_api.engine.grammar import Grammars
from inference_api.engine.runner import new_sequence
from inference_api.engine.sampling import adjust
from inference_api.engine.types import SamplingParams
from inference_api.modeling.cache import LoadedModel
from inference_api.modeling.prompt import PromptEncoder
from tests.engine.test_grammar import decode, request, tiny

__all__ = ["tiny"]

Tiny = tuple[LoadedModel, PromptEncoder, Grammars]


def test_identical_prompts_are_prefilled_once_and_decode_as_they_would_alone(tiny: Tiny) -> None:
    model, encoder, _ = tiny
    alone = [decode(model, [request(encoder, model, "Hello", 12, do_sample=True, seed=s)])[0] for s in (1, 2, 3)]
    calls = []
    forward = model.base.model.forward

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(kwargs["input_ids"].shape[0])  # type: ignore[union-attr]
        return forward(*args, **kwargs)

    model.base.model.forward = counting  # type: ignore[method-assign]
    try:
        batch = DecodeBatch(model)
        other = request(encoder, model, "Something else", 12)
        sequences = [
            new_sequence(model, r)
            for r in [*(request(encoder, model, "Hello", 12, do_sample=True, seed=s) for s in (1, 2, 3)), other]
        ]
        batch.prefill(sequences)
    finally:
        model.base.model.forward = forward  # type: ignore[method-assign]
    assert calls == [2], "one forward for two distinct prompts"
    while any(s.finish_reason is None for s in sequences):
        batch.remove([s for s in batch.sequences if s.finish_reason is not None])
        batch.step()
    assert [s.assembler.text for s in sequences[:3]] == [s.assembler.text for s in alone]


def test_processors_follow_openai_and_transformers() -> None:
    from transformers import RepetitionPenaltyLogitsProcessor

    torch.manual_seed(0)
    logits = torch.randn(50)
    prompt, generated = [1, 2, 3], [3, 7, 7, 9]
    params = SamplingParams(max_new_tokens=8, repetition_penalty=1.3)
    expected = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([prompt + generated]), logits[None].clone())[0]
    assert torch.allclose(adjust(logits, params, prompt, generated, frozenset()), expected)
    params = SamplingParams(max_new_tokens=8, presence_penalty=0.5, frequency_penalty=0.25, logit_bias=((4, -100.0),))
    adjusted = adjust(logits, params, prompt, generated, frozenset({0}))
    assert adjusted[7] == pytest.approx(float(logits[7]) - 0.5 - 2 * 0.25)
    assert adjusted[9] == pytest.approx(float(logits[9]) - 0.5 - 0.25)
    assert adjusted[1] == pytest.approx(float(logits[1]))  # the prompt is not penalised by OpenAI's penalties
    assert adjusted[4] == pytest.approx(float(logits[4]) - 100)
    early = adjust(logits, SamplingParams(max_new_tokens=8, min_tokens=5), prompt, generated, frozenset({0}))
    assert early[0] == float("-inf") and torch.equal(early[1:], logits[1:])
    late = adjust(logits, SamplingParams(max_new_tokens=8, min_tokens=4), prompt, generated, frozenset({0}))
    assert torch.equal(late, logits)


def test_a_biased_row_and_a_free_row_share_one_batch(tiny: Tiny) -> None:
    model, encoder, _ = tiny
    free_alone = decode(model, [request(encoder, model, "Hello there", 10)])[0]
    eos = min(new_sequence(model, request(encoder, model, "x", 1)).eos)
    ends = request(encoder, model, "Hi", 10, logit_bias=((eos, 100.0),))
    held = request(encoder, model, "Hi", 10, logit_bias=((eos, 100.0),), min_tokens=4)
    forced = request(encoder, model, "Hi", 10, logit_bias=((42, 100.0),))
    sequences = decode(model, [ends, request(encoder, model, "Hello there", 10), held, forced])
    assert sequences[0].tokens_generated == 0 and sequences[0].finish_reason == "stop"
    assert sequences[1].assembler.text == free_alone.assembler.text
    assert sequences[2].tokens_generated == 4 and sequences[2].finish_reason == "stop"
    assert sequences[3].assembler.ids == [42] * 10
