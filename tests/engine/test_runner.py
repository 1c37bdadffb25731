"""Text assembly with the real tokenizer (characters, stop strings) and the choice of the next token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from inference_api.engine.runner import TextAssembler
from inference_api.engine.sampling import choose_next, make_generator
from inference_api.engine.types import SamplingParams

MULTI_BYTE = "héllo 🌍 世界"


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def ids_of(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def feed(assembler: TextAssembler, ids: list[int]) -> list[str]:
    return [assembler.add(token) for token in ids]


@pytest.mark.parametrize("text", [MULTI_BYTE, "x ✓ é ü ß Ω 中文 😀👍🏽", "🌍🌍🌍"])
def test_multi_byte_characters_are_never_split(tokenizer: Any, text: str) -> None:
    ids = ids_of(tokenizer, text)
    assert len(ids) > len(text.split())  # some characters really span several tokens
    assembler = TextAssembler(tokenizer, ())
    deltas = feed(assembler, ids)
    assert "" in deltas  # a token ending inside a character was held back
    assert not any("\ufffd" in delta for delta in deltas)
    assert "".join(deltas) == text
    assert assembler.text == text
    assert assembler.finish() == ""
    assert not assembler.stopped


def test_each_delta_is_released_as_soon_as_its_characters_are_whole(tokenizer: Any) -> None:
    ids = ids_of(tokenizer, "Hello world")
    assembler = TextAssembler(tokenizer, ())
    assert feed(assembler, ids) == ["Hello", " world"]


def test_special_tokens_are_left_out(tokenizer: Any) -> None:
    ids = [*ids_of(tokenizer, "Hi"), tokenizer.eos_token_id, *ids_of(tokenizer, " there")]
    assembler = TextAssembler(tokenizer, ())
    assert "".join(feed(assembler, ids)) == "Hi there"


def test_text_after_a_stop_string_never_appears(tokenizer: Any) -> None:
    text = "Hello world. STOP and more text"
    assembler = TextAssembler(tokenizer, ("STOP",))
    deltas = []
    for token in ids_of(tokenizer, text):
        deltas.append(assembler.add(token))
        if assembler.stopped:
            break
    joined = "".join(deltas)
    assert joined == "Hello world. "
    assert assembler.stopped
    assert assembler.text == "Hello world. "
    assert "ST" not in joined
    assert assembler.finish() == ""


def test_tokens_after_the_stop_add_nothing(tokenizer: Any) -> None:
    assembler = TextAssembler(tokenizer, ("STOP",))
    deltas = feed(assembler, ids_of(tokenizer, "Hello world. STOP and more text"))
    assert assembler.stopped
    joined = "".join(deltas) + assembler.finish()
    assert joined == "Hello world. "
    assert "more" not in joined and "and" not in joined


def test_a_stop_string_spanning_tokens_is_caught(tokenizer: Any) -> None:
    ids = ids_of(tokenizer, "hello world and beyond")
    assert len(ids) >= 3
    assembler = TextAssembler(tokenizer, ("lo wo",))
    deltas = feed(assembler, ids)
    assert "".join(deltas) + assembler.finish() == "hel"
    assert assembler.stopped
    assert not any("lo" in delta or "w" in delta for delta in deltas)


def test_the_earliest_of_several_stop_strings_wins(tokenizer: Any) -> None:
    assembler = TextAssembler(tokenizer, ("more", "\n\n", "world"))
    deltas = feed(assembler, ids_of(tokenizer, "Hello world\n\nmore text"))
    assert "".join(deltas) + assembler.finish() == "Hello "
    assert assembler.stopped


def test_a_stop_string_at_the_very_start_gives_nothing(tokenizer: Any) -> None:
    assembler = TextAssembler(tokenizer, ("Hello",))
    deltas = feed(assembler, ids_of(tokenizer, "Hello world"))
    assert deltas == ["", ""]
    assert assembler.stopped and assembler.text == ""


def test_a_partial_stop_prefix_is_held_back_then_released_by_finish(tokenizer: Any) -> None:
    assembler = TextAssembler(tokenizer, ("STOP",))
    deltas = feed(assembler, ids_of(tokenizer, "Hello ST"))
    assert deltas == ["Hello", " "]  # "ST" could still become "STOP"
    assert not assembler.stopped
    assert assembler.finish() == "ST"
    assert assembler.finish() == ""


def test_a_held_prefix_is_released_once_it_cannot_become_the_stop(tokenizer: Any) -> None:
    assembler = TextAssembler(tokenizer, ("STOP",))
    ids = ids_of(tokenizer, "Hello world. ST")
    deltas = feed(assembler, ids)
    assert "".join(deltas) == "Hello world. "
    deltas.append(assembler.add(ids_of(tokenizer, "ART")[0]))
    assert deltas[-1].startswith("ST")
    assert not assembler.stopped
    assert "".join(deltas) + assembler.finish() == tokenizer.decode(ids + ids_of(tokenizer, "ART"))


def test_a_held_prefix_completed_into_the_stop_is_dropped(tokenizer: Any) -> None:
    assembler = TextAssembler(tokenizer, ("STOP",))
    deltas = feed(assembler, ids_of(tokenizer, "Hello world. ST"))
    deltas += feed(assembler, ids_of(tokenizer, "OP"))
    assert assembler.stopped
    assert "".join(deltas) + assembler.finish() == "Hello world. "


def test_stop_strings_and_multi_byte_characters_together(tokenizer: Any) -> None:
    assembler = TextAssembler(tokenizer, ("世界",))
    deltas = feed(assembler, ids_of(tokenizer, MULTI_BYTE + " and after"))
    assert "".join(deltas) + assembler.finish() == "héllo 🌍 "
    assert assembler.stopped
    assert not any("\ufffd" in delta for delta in deltas)


# --- choosing the next token -------------------------------------------------------------------


def random_logits(seed: int = 0, size: int = 500) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, generator=generator)


def sampled(**overrides: Any) -> SamplingParams:
    values: dict[str, Any] = {"max_new_tokens": 8, "do_sample": True, "temperature": 1.0}
    values.update(overrides)
    return SamplingParams(**values)


def test_greedy_is_argmax() -> None:
    for seed in range(5):
        logits = random_logits(seed)
        assert choose_next(logits, SamplingParams(max_new_tokens=1), None) == int(torch.argmax(logits))


def test_greedy_params_make_no_generator_and_ignore_one() -> None:
    greedy = SamplingParams(max_new_tokens=1)
    assert make_generator(greedy, torch.device("cpu")) is None
    zero_temperature = sampled(temperature=0.0, seed=1)
    assert zero_temperature.greedy
    assert make_generator(zero_temperature, torch.device("cpu")) is None
    logits = random_logits(3)
    generator = torch.Generator().manual_seed(0)
    assert choose_next(logits, zero_temperature, generator) == int(torch.argmax(logits))


def test_argmax_of_a_clear_winner() -> None:
    logits = torch.zeros(10)
    logits[7] = 5.0
    assert choose_next(logits, SamplingParams(max_new_tokens=1), None) == 7


def draw(params: SamplingParams, logits: torch.Tensor, count: int = 40) -> list[int]:
    generator = make_generator(params, torch.device("cpu"))
    assert generator is not None
    return [choose_next(logits, params, generator) for _ in range(count)]


def test_the_same_seed_repeats_the_same_choices() -> None:
    logits = random_logits(1) * 0.1  # nearly flat: many tokens are likely
    params = sampled(seed=1234, temperature=1.5)
    first = draw(params, logits)
    torch.manual_seed(999)  # the global RNG must not matter
    second = draw(params, logits)
    assert first == second
    assert len(set(first)) > 5  # it really sampled
    assert draw(sampled(seed=4321, temperature=1.5), logits) != first


@pytest.mark.parametrize(("temperature", "top_p"), [(1e-300, 1.0), (1.0, 5e-324), (1e-45, 1e-45), (5e-324, 5e-324)])
def test_extreme_but_valid_temperature_and_top_p_choose_the_argmax(temperature: float, top_p: float) -> None:
    # Each of these once made the row NaN (all tokens dropped, or inf / inf) and the request a 500.
    for seed in range(3):
        logits = random_logits(seed)
        params = sampled(temperature=temperature, top_p=top_p, seed=seed)
        assert set(draw(params, logits, count=5)) == {int(torch.argmax(logits))}


def test_top_k_one_is_argmax_even_when_sampling() -> None:
    for seed in range(5):
        logits = random_logits(seed) * 0.01  # nearly flat, so plain sampling would rarely pick the argmax
        params = sampled(top_k=1, temperature=5.0, seed=seed)
        assert set(draw(params, logits, count=20)) == {int(torch.argmax(logits))}


def test_top_k_keeps_only_the_k_most_likely() -> None:
    logits = random_logits(2) * 0.01
    top = set(torch.topk(logits, 3).indices.tolist())
    choices = set(draw(sampled(top_k=3, seed=5), logits, count=200))
    assert choices == top


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    probs = torch.tensor([0.1, 0.4, 0.2, 0.3])  # sorted: 0.4 (1), 0.3 (3), 0.2 (2), 0.1 (0)
    logits = probs.log()
    choices = set(draw(sampled(top_p=0.5, seed=0), logits, count=300))
    assert choices == {1, 3}
    choices = set(draw(sampled(top_p=0.75, seed=0), logits, count=300))
    assert choices == {1, 3, 2}


def test_a_tiny_top_p_keeps_the_most_likely_token() -> None:
    logits = random_logits(4) * 0.01
    assert set(draw(sampled(top_p=1e-6, seed=3), logits, count=20)) == {int(torch.argmax(logits))}


def test_without_a_generator_sampling_params_fall_back_to_argmax() -> None:
    logits = random_logits(6)
    assert choose_next(logits, sampled(seed=1), None) == int(torch.argmax(logits))
