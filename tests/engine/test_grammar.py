"""Constrained rows in the continuous batch: each row under its own grammar (or none), decoded together; the free
rows get exactly the tokens they get alone, a row whose grammar fails ends alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from inference_api.engine.batch import DecodeBatch
from inference_api.engine.grammar import Grammars, GrammarSpec
from inference_api.engine.runner import Sequence, new_sequence
from inference_api.engine.types import GenerationRequest, SamplingParams
from inference_api.errors import ErrorCode, ServiceError
from inference_api.modeling.cache import LoadedModel, ModelCache
from inference_api.modeling.loader import Precision
from inference_api.modeling.prompt import PromptEncoder
from inference_api.modeling.registry import ModelRef, ModelRegistry

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "ok": {"type": "boolean"}},
    "required": ["name", "ok"],
    "additionalProperties": False,
}


@pytest.fixture
def tiny(registry_file: Path, tmp_path: Path) -> tuple[LoadedModel, PromptEncoder, Grammars]:
    registry = ModelRegistry.from_file(registry_file, ModelRef("tiny"))
    cache = ModelCache(
        registry, data_dir=tmp_path, device=torch.device("cpu"), precision=Precision("float32"), capacity=2
    )
    encoder = PromptEncoder(registry, tmp_path)
    return cache.get(ModelRef("tiny")), encoder, Grammars(encoder.tokenizer)


def request(encoder: PromptEncoder, model: LoadedModel, text: str, tokens: int, **params: object) -> GenerationRequest:
    encoded = encoder.encode_chat("tiny", [{"role": "user", "content": text}])
    return GenerationRequest(model.ref, encoded.ids, SamplingParams(max_new_tokens=tokens, **params))  # type: ignore[arg-type]


def decode(model: LoadedModel, requests: list[GenerationRequest]) -> list[Sequence]:
    batch = DecodeBatch(model)
    sequences = [new_sequence(model, r) for r in requests]
    batch.prefill(sequences)
    while any(s.finish_reason is None for s in sequences):
        batch.remove([s for s in batch.sequences if s.finish_reason is not None])
        batch.step()
    return sequences


def test_constrained_and_free_rows_share_one_batch(tiny: tuple[LoadedModel, PromptEncoder, Grammars]) -> None:
    model, encoder, grammars = tiny
    spec = GrammarSpec("json_schema", json.dumps(SCHEMA))
    free_alone = decode(model, [request(encoder, model, "Hello there", 24)])[0]
    constrained = [request(encoder, model, f"Item {i}", 24, do_sample=True, seed=i) for i in range(3)]
    for r in constrained:
        r.grammar = grammars.row("tiny", spec)
    free = request(encoder, model, "Hello there", 24)
    sequences = decode(model, [constrained[0], free, *constrained[1:]])
    assert sequences[1].assembler.text == free_alone.assembler.text, "a free row does not feel its neighbours"
    for sequence in (sequences[0], *sequences[2:]):
        assert sequence.finish_reason == "stop"
        value = json.loads(sequence.assembler.text)
        assert set(value) == {"name", "ok"} and isinstance(value["ok"], bool)


def test_a_row_whose_grammar_fails_ends_alone(tiny: tuple[LoadedModel, PromptEncoder, Grammars]) -> None:
    model, encoder, grammars = tiny
    doomed = request(encoder, model, "Item", 16)
    doomed.grammar = grammars.row("tiny", GrammarSpec("regex", "[0-9]+"))
    # The matcher is driven past its grammar (as a bug or a corrupt state would): the next token is refused.
    doomed.grammar.matcher.consume_token(doomed.grammar.table.tokenizer.tokenize_str("x")[0])
    other = request(encoder, model, "Hello", 8)
    sequences = decode(model, [doomed, other])
    assert sequences[0].finish_reason == "grammar_error"
    assert sequences[1].finish_reason in ("stop", "length") and sequences[1].tokens_generated > 0


def test_what_cannot_compile_is_a_clear_refusal(tiny: tuple[LoadedModel, PromptEncoder, Grammars]) -> None:
    _, _, grammars = tiny
    for spec, says in (
        (GrammarSpec("json_schema", '{"type": "nonsense"}'), "nonsense"),
        (GrammarSpec("regex", "(unclosed"), "guided_regex"),
        (GrammarSpec("grammar", "start: undefined_rule"), "undefined_rule"),
    ):
        with pytest.raises(ServiceError) as refused:
            grammars.row("tiny", spec)
        assert refused.value.code is ErrorCode.INVALID_GRAMMAR and refused.value.status == 400
        assert says in refused.value.message
