"""DecodeBatch prefills with shared prefixes: the same cache and tokens as without, and the prefix run once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inference_api.engine.batch import DecodeBatch
from inference_api.engine.runner import new_sequence
from inference_api.engine.types import GenerationRequest, SamplingParams
from inference_api.modeling.cache import LoadedModel, ModelCache
from inference_api.modeling.loader import Precision
from inference_api.modeling.prefix import PrefixStore
from inference_api.modeling.prompt import PromptEncoder
from inference_api.modeling.registry import ModelRef, ModelRegistry

QUESTIONS = ["What is the capital of France?", "Name three colours", "Why is the sky blue? Answer briefly", "Hi"]


@pytest.fixture
def models(registry_file: Path, tmp_path: Path) -> tuple[ModelCache, PromptEncoder]:
    registry = ModelRegistry.from_file(registry_file, ModelRef("tiny"))
    cpu, exact = torch.device("cpu"), Precision("float32")
    cache = ModelCache(registry, data_dir=tmp_path, device=cpu, precision=exact, capacity=2)
    return cache, PromptEncoder(registry, tmp_path)


def requests(encoder: PromptEncoder, ref: ModelRef, *, share: bool) -> list[GenerationRequest]:
    found = []
    for question in QUESTIONS:
        encoded = encoder.encode_chat("tiny", [{"role": "user", "content": question}])
        shared = encoded.shared_prefix if share else 0
        found.append(GenerationRequest(ref, encoded.ids, SamplingParams(max_new_tokens=8), shared_prefix=shared))
    return found


def run(model: LoadedModel, batch_requests: list[GenerationRequest], steps: int = 6) -> tuple[DecodeBatch, list[int]]:
    batch = DecodeBatch(model)
    sequences = [new_sequence(model, r) for r in batch_requests]
    batch.prefill(sequences)
    for _ in range(steps):
        batch.step()
    return batch, [s.last_token or 0 for s in sequences]


def real_columns(batch: DecodeBatch, row: int, layer: int) -> torch.Tensor:
    """Keys of one row's real tokens, in order (padding, wherever it sits, left out)."""
    assert batch._mask is not None
    keys: torch.Tensor = batch._cache.layers[layer].keys[row]
    return keys[:, batch._mask[row].bool()]


def test_a_shared_prefix_gives_the_same_cache_and_tokens_as_the_whole_prompt(
    models: tuple[ModelCache, PromptEncoder],
) -> None:
    cache, encoder = models
    model = cache.get(ModelRef("tiny"))
    plain, plain_tokens = run(model, requests(encoder, model.ref, share=False))
    shared, shared_tokens = run(model, requests(encoder, model.ref, share=True))
    assert shared_tokens == plain_tokens
    for row in range(len(QUESTIONS)):
        for layer in range(len(plain._cache.layers)):
            assert torch.allclose(real_columns(shared, row, layer), real_columns(plain, row, layer), atol=1e-5)
    assert shared._positions is not None and plain._positions is not None
    assert torch.equal(shared._positions, plain._positions)


def test_the_prefix_is_run_once_per_model_version(models: tuple[ModelCache, PromptEncoder]) -> None:
    cache, encoder = models
    base, alpha = cache.get(ModelRef("tiny")), cache.get(ModelRef("tiny", "alpha"))
    store = base.base.prefixes
    assert alpha.base is base.base  # adapters share the base and its store
    run(base, requests(encoder, base.ref, share=True), steps=1)
    assert (len(store), store.misses) == (1, 1)
    run(base, requests(encoder, base.ref, share=True)[:2], steps=1)
    assert (len(store), store.misses, store.hits) == (1, 1, 5)
    # An adapter changes every layer's keys and values: its prefix is its own.
    run(alpha, requests(encoder, alpha.ref, share=True)[:1], steps=1)
    assert (len(store), store.misses) == (2, 2)


def test_prefix_cache_tokens_zero_runs_whole_prompts(models: tuple[ModelCache, PromptEncoder]) -> None:
    cache, encoder = models
    model = cache.get(ModelRef("tiny"))
    model.base.prefixes = PrefixStore(0)
    run(model, requests(encoder, model.ref, share=True), steps=1)
    assert (len(model.base.prefixes), model.base.prefixes.misses) == (0, 0)
