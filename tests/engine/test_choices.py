"""n choices of one prompt: the batch prefills identical prompts once and copies the rows; each row then decodes on
its own generator, exactly as it would alone. And the logit processors, applied only to the rows that ask."""

from __future__ import annotations

import time

from inference_api.engine.batch import DecodeBatch
from inference_api.engine.grammar import Grammars
from inference_api.engine.runner import new_sequence
from inference_api.engine.types import GenerationRequest
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


def test_prefill_of_copies_costs_about_one_prompt(tiny: Tiny) -> None:
    """Measured, loosely asserted (shared cores): 8 copies of a prompt against 8 distinct prompts of its length."""
    model, encoder, _ = tiny
    text = "Tell me a long story about " + "a cat and a dog " * 10

    def timed(requests: list[GenerationRequest]) -> float:
        best = float("inf")
        for _ in range(3):
            batch = DecodeBatch(model)
            started = time.perf_counter()
            batch.prefill([new_sequence(model, r) for r in requests])
            best = min(best, time.perf_counter() - started)
        return best

    copies = timed([request(encoder, model, text, 4) for _ in range(8)])
    distinct = timed([request(encoder, model, text.replace("cat", f"cat{i}"), 4) for i in range(8)])
    print(f"prefill of 8 copies {copies * 1000:.1f} ms, of 8 distinct prompts {distinct * 1000:.1f} ms")
    assert copies < distinct
