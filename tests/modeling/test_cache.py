"""The model cache, on the real loader: LRU order, statistics, shared bases and LoRA adapters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from inference_api.errors import ErrorCode, ServiceError
from inference_api.modeling.cache import LoadedModel, ModelCache
from inference_api.modeling.loader import Precision
from inference_api.modeling.registry import ModelRef, ModelRegistry

BASE = ModelRef("tiny")
ALPHA = ModelRef("tiny", "alpha")
BETA = ModelRef("tiny", "beta")
COPY = ModelRef("tiny-copy")
PROMPT = [1, 422, 1095, 314, 253, 1345, 30]


def make_cache(registry_file: Path, data_dir: Path, capacity: int = 2) -> ModelCache:
    registry = ModelRegistry.from_file(registry_file, ModelRef("tiny"))
    return ModelCache(
        registry, data_dir=data_dir, device=torch.device("cpu"), precision=Precision("float32"), capacity=capacity
    )


@pytest.fixture
def cache(registry_file: Path, tmp_path: Path) -> ModelCache:
    return make_cache(registry_file, tmp_path / "data")


def logits_of(entry: LoadedModel) -> torch.Tensor:
    entry.activate()
    with torch.inference_mode():
        logits: torch.Tensor = entry.base.model(input_ids=torch.tensor([PROMPT])).logits[0].clone()
    return logits


def plain_logits(tiny_model_dir: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    model.eval()
    with torch.inference_mode():
        logits: torch.Tensor = model(input_ids=torch.tensor([PROMPT])).logits[0].clone()
    return logits


def test_lru_evicts_the_least_recently_used(cache: ModelCache) -> None:
    cache.get(BASE)
    cache.get(ALPHA)
    assert cache.refs() == [BASE, ALPHA]
    cache.get(COPY)
    assert cache.refs() == [ALPHA, COPY]
    assert cache.peek(BASE) is None
    assert cache.stats.evictions == 1


def test_a_hit_moves_the_entry_to_the_end(cache: ModelCache) -> None:
    cache.get(BASE)
    cache.get(ALPHA)
    cache.get(BASE)  # now ALPHA is the least recently used
    assert cache.refs() == [ALPHA, BASE]
    cache.get(COPY)
    assert cache.refs() == [BASE, COPY]
    assert cache.peek(ALPHA) is None


def test_peek_does_not_change_the_order_or_the_stats(cache: ModelCache) -> None:
    cache.get(BASE)
    cache.get(ALPHA)
    assert cache.peek(BASE) is not None
    assert cache.refs() == [BASE, ALPHA]
    assert cache.stats.hits[BASE] == 0


def test_hits_misses_and_load_times_are_counted_per_ref(cache: ModelCache) -> None:
    first = cache.get(BASE)
    assert cache.stats.misses[BASE] == 1 and cache.stats.hits[BASE] == 0
    second = cache.get(BASE)
    assert second is first
    assert cache.stats.misses[BASE] == 1 and cache.stats.hits[BASE] == 1
    cache.get(ALPHA)
    cache.get(ALPHA)
    cache.get(ALPHA)
    assert cache.stats.misses[ALPHA] == 1 and cache.stats.hits[ALPHA] == 2
    assert cache.stats.misses[BETA] == 0
    assert set(cache.stats.load_seconds) == {BASE, ALPHA}
    assert all(seconds > 0 for seconds in cache.stats.load_seconds.values())
    assert cache.stats.evictions == 0


def test_evictions_are_counted(cache: ModelCache) -> None:
    for ref in (BASE, ALPHA, BETA, COPY):
        cache.get(ref)
    assert cache.stats.evictions == 2
    assert cache.refs() == [BETA, COPY]
    cache.get(BASE)  # reloaded after its eviction: a second miss
    assert cache.stats.misses[BASE] == 2
    assert cache.stats.evictions == 3


def test_adapters_share_one_loaded_base(cache: ModelCache) -> None:
    base = cache.get(BASE)
    alpha = cache.get(ALPHA)
    assert alpha.base is base.base
    assert alpha.base.model is base.base.model
    assert alpha.adapter == "alpha" and base.adapter is None
    assert set(cache.loaded_bases()) == {"tiny"}
    cache.get(BETA)  # evicts BASE, but alpha still holds the same base
    assert cache.get(BETA).base is alpha.base
    assert alpha.base.adapters == {"alpha", "beta"}
    assert cache.loaded_bases()["tiny"] is alpha.base


def test_the_adapter_is_loaded_once_per_base(cache: ModelCache) -> None:
    alpha = cache.get(ALPHA)
    params = sum(p.numel() for p in alpha.base.model.parameters())
    cache.get(BASE)
    assert sum(p.numel() for p in alpha.base.model.parameters()) == params


def test_a_second_base_is_a_second_copy(cache: ModelCache) -> None:
    tiny = cache.get(BASE)
    copy = cache.get(COPY)
    assert copy.base is not tiny.base
    assert set(cache.loaded_bases()) == {"tiny", "tiny-copy"}


def test_adapters_change_the_logits_and_the_base_stays_exact(cache: ModelCache, tiny_model_dir: Path) -> None:
    expected = plain_logits(tiny_model_dir)
    base = cache.get(BASE)
    before = logits_of(base)
    assert torch.equal(before, expected)

    alpha = logits_of(cache.get(ALPHA))
    beta = logits_of(cache.get(BETA))  # evicts BASE; alpha and beta stay on the same base
    assert not torch.allclose(alpha, expected, atol=1e-4)
    assert not torch.allclose(beta, expected, atol=1e-4)
    assert not torch.allclose(alpha, beta, atol=1e-4)

    # Back to the base version after adapters were used (and while they are still loaded).
    assert torch.equal(logits_of(cache.get(BASE)), expected)
    # Switching back and forth between versions repeats each version's output exactly.
    assert torch.equal(logits_of(cache.get(ALPHA)), alpha)
    assert torch.equal(logits_of(cache.get(BASE)), expected)


def test_the_base_is_exact_after_its_adapters_are_evicted(
    registry_file: Path, tmp_path: Path, tiny_model_dir: Path
) -> None:
    cache = make_cache(registry_file, tmp_path, capacity=3)
    expected = plain_logits(tiny_model_dir)
    base = cache.get(BASE)
    alpha = logits_of(cache.get(ALPHA))  # alpha is active when it goes
    cache.get(BETA)
    cache.get(COPY)  # evicts BASE
    assert cache.refs() == [ALPHA, BETA, COPY]
    cache.get(BASE)  # evicts ALPHA (the active adapter)
    assert cache.refs() == [BETA, COPY, BASE]
    assert base.base.adapters == {"beta"}
    assert torch.equal(logits_of(cache.get(BASE)), expected)
    # An evicted adapter loads again on the same base and gives the same output as before.
    assert torch.equal(logits_of(cache.get(ALPHA)), alpha)
    assert cache.get(ALPHA).base is base.base


def test_evicting_the_last_version_drops_the_base(cache: ModelCache) -> None:
    cache.get(BASE)
    cache.get(ALPHA)
    assert set(cache.loaded_bases()) == {"tiny"}
    assert cache.evict("tiny") == 2
    assert cache.refs() == []
    assert cache.loaded_bases() == {}
    assert cache.stats.evictions == 2
    assert cache.evict("tiny") == 0
    assert cache.evict("no-such-model") == 0


def test_lru_eviction_of_a_bases_last_version_drops_it(cache: ModelCache) -> None:
    cache.get(COPY)
    cache.get(BASE)
    cache.get(ALPHA)  # evicts COPY, the only version of tiny-copy
    assert set(cache.loaded_bases()) == {"tiny"}
    cache.get(COPY)  # evicts BASE, but ALPHA still uses tiny
    assert set(cache.loaded_bases()) == {"tiny", "tiny-copy"}


def test_evict_keeps_other_bases(cache: ModelCache) -> None:
    cache.get(ALPHA)
    copy = cache.get(COPY)
    assert cache.evict("tiny") == 1
    assert cache.refs() == [COPY]
    assert cache.loaded_bases() == {"tiny-copy": copy.base}


def test_clear_drops_everything(cache: ModelCache) -> None:
    cache.get(ALPHA)
    cache.get(COPY)
    cache.clear()
    assert cache.refs() == [] and cache.loaded_bases() == {}
    assert cache.stats.evictions == 2


def test_unknown_version_or_model_is_model_not_found(cache: ModelCache) -> None:
    with pytest.raises(ServiceError) as caught:
        cache.get(ModelRef("tiny", "gamma"))
    assert caught.value.code is ErrorCode.MODEL_NOT_FOUND
    assert "gamma" in caught.value.message
    with pytest.raises(ServiceError) as caught:
        cache.get(ModelRef("gpt-17"))
    assert caught.value.code is ErrorCode.MODEL_NOT_FOUND
    assert cache.refs() == []


def bad_adapter_registry(tmp_path: Path, tiny_model_dir: Path) -> Path:
    empty = tmp_path / "empty-adapter"
    empty.mkdir()
    (empty / "README.md").write_text("no adapter_config.json here\n")
    path = tmp_path / "models.yaml"
    models = [
        {"name": "tiny", "path": str(tiny_model_dir), "versions": [{"name": "broken", "adapter": str(empty)}]},
        {"name": "tiny-copy", "path": str(tiny_model_dir)},
    ]
    path.write_text(yaml.safe_dump({"models": models}))
    return path


def test_adapter_folder_without_config_is_model_not_found(tmp_path: Path, tiny_model_dir: Path) -> None:
    cache = make_cache(bad_adapter_registry(tmp_path, tiny_model_dir), tmp_path / "data")
    with pytest.raises(ServiceError) as caught:
        cache.get(ModelRef("tiny", "broken"))
    assert caught.value.code is ErrorCode.MODEL_NOT_FOUND
    assert "adapter_config.json" in caught.value.message
    assert cache.refs() == []
    # The base version still works afterwards.
    assert cache.get(ModelRef("tiny")).adapter is None


def test_a_failed_adapter_load_leaves_no_base_behind(tmp_path: Path, tiny_model_dir: Path) -> None:
    cache = make_cache(bad_adapter_registry(tmp_path, tiny_model_dir), tmp_path / "data", capacity=1)
    with pytest.raises(ServiceError):
        cache.get(ModelRef("tiny", "broken"))
    cache.get(COPY)
    assert cache.refs() == [COPY]
    assert set(cache.loaded_bases()) == {"tiny-copy"}  # capacity 1: one base's weights, not two
