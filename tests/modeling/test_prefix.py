"""Shared prompt prefixes: which tokens the encoder marks as shared, and the store that keeps their states."""

from __future__ import annotations

from pathlib import Path

import torch

from inference_api.modeling.prefix import PrefixStore
from inference_api.modeling.prompt import PromptEncoder
from inference_api.modeling.registry import ModelRef, ModelRegistry


def encoder(registry_file: Path, tmp_path: Path) -> PromptEncoder:
    return PromptEncoder(ModelRegistry.from_file(registry_file, ModelRef("tiny")), tmp_path)


def test_chat_prompts_share_their_system_block(registry_file: Path, tmp_path: Path) -> None:
    prompts = encoder(registry_file, tmp_path)
    one = prompts.encode_chat("tiny", [{"role": "user", "content": "What is the capital of France?"}])
    two = prompts.encode_chat("tiny", [{"role": "user", "content": "Write a haiku"}])
    assert one.shared_prefix == two.shared_prefix > 0
    assert one.ids[: one.shared_prefix] == two.ids[: two.shared_prefix]
    tokenizer = prompts._get("tiny").tokenizer
    head = tokenizer.decode(one.ids[: one.shared_prefix])
    # SmolLM2's template adds its default system prompt; the block ends where the user's words begin.
    assert head.startswith("<|im_start|>system\n") and head.endswith("<|im_start|>user\n")
    assert "capital" in tokenizer.decode(one.ids[one.shared_prefix :])


def test_own_system_messages_make_their_own_block(registry_file: Path, tmp_path: Path) -> None:
    prompts = encoder(registry_file, tmp_path)
    system = {"role": "system", "content": "You answer in French."}
    chat = prompts.encode_chat("tiny", [system, {"role": "user", "content": "Hello"}])
    history = [system, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Salut"}]
    later = prompts.encode_chat("tiny", [*history, {"role": "user", "content": "Again"}])
    assert chat.ids[: chat.shared_prefix] == later.ids[: later.shared_prefix]
    assert "French" in prompts._get("tiny").tokenizer.decode(chat.ids[: chat.shared_prefix])
    assert prompts.encode_chat("tiny", [system]).shared_prefix == 0  # nothing after the system block
    assert prompts.encode_raw("tiny", "plain text").shared_prefix == 0


def states(tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.zeros(1, 2, tokens, 4), torch.zeros(1, 2, tokens, 4))]


def test_store_drops_the_least_recently_used_past_its_token_budget() -> None:
    store = PrefixStore(max_tokens=10)
    store.put(None, (1, 2, 3, 4), states(4))
    store.put(None, (5, 6, 7, 8), states(4))
    assert store.get(None, (1, 2, 3, 4)) is not None  # now the most recent
    store.put(None, (9, 10, 11), states(3))
    assert store.get(None, (5, 6, 7, 8)) is None
    assert store.get(None, (1, 2, 3, 4)) is not None and store.tokens == 7
    assert (store.hits, store.misses) == (2, 1)


def test_store_keeps_each_adapter_apart_and_forgets_one_on_request() -> None:
    store = PrefixStore()
    store.put(None, (1, 2), states(2))
    store.put("alpha", (1, 2), states(2))
    assert store.get("beta", (1, 2)) is None
    store.forget("alpha")
    assert store.get("alpha", (1, 2)) is None and store.get(None, (1, 2)) is not None
    assert store.tokens == 2
