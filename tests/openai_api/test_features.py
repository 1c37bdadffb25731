"""The SDK features beyond text, through the official SDK against a real server on the tiny model: log-probabilities
(recomputed here from the model itself), n choices, logit processors, tools."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from inference_api.app import create_app
from tests.conftest import make_settings
from tests.openai_api.conftest import sdk, serving

HELLO = [{"role": "user", "content": "Say hello to the world."}]


class Reference:
    """The tiny model loaded here with transformers: its own log-probabilities, to check the server's against."""

    def __init__(self, folder: Path) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.texts: dict[str, list[int]] = {}
        for token in range(len(self.tokenizer)):
            self.texts.setdefault(self.tokenizer.decode([token]), []).append(token)
        self.model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def logprobs(self, ids: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([ids])).logits[0, -1]
        return torch.log_softmax(logits.float(), dim=-1)

    def follow(self, prompt: list[int], tokens: list[tuple[str, float]]) -> list[tuple[int, torch.Tensor]]:
        """Each returned (text, logprob) matched to the token of that text whose model log-probability it is."""
        ids, steps = list(prompt), []
        for text, value in tokens:
            logprobs = self.logprobs(ids)
            matching = self.texts.get(text, [])
            assert matching, f"no token {text!r}"
            token = min(matching, key=lambda candidate: abs(float(logprobs[candidate]) - value))
            assert abs(float(logprobs[token]) - value) < 1e-3
            steps.append((token, logprobs))
            ids.append(token)
        return steps


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[str]:
    """The tiny model in float32 (the CPU's default is int8 layers), so its log-probabilities are the reference's."""
    folder = tmp_path_factory.mktemp("features")
    registry = folder / "models.yaml"
    registry.write_text(yaml.safe_dump({"models": [{"name": "tiny", "path": str(tiny_model_dir)}]}))
    with serving(create_app(make_settings(folder / "data", registry, dtype="float32"))) as url:
        yield url


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> Reference:
    return Reference(tiny_model_dir)


def test_chat_logprobs_are_the_models_own(server: str, reference: Reference) -> None:
    """Sampled hot (temperature 1.5): the log-probabilities are still those of the raw model, with its top 5."""
    answer = sdk(server).chat.completions.create(
        model="tiny", messages=HELLO, max_tokens=8, temperature=1.5, seed=3, logprobs=True, top_logprobs=5
    )
    content = answer.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == answer.usage.completion_tokens  # type: ignore[union-attr]
    assert "".join(entry.token for entry in content) == answer.choices[0].message.content
    steps = reference.follow(reference.chat_ids(HELLO), [(entry.token, entry.logprob) for entry in content])
    for entry, (_, logprobs) in zip(content, steps, strict=True):
        assert entry.bytes == list(entry.token.encode())
        best = torch.topk(logprobs, 5).values.tolist()
        assert [top.logprob for top in entry.top_logprobs] == pytest.approx(best, abs=1e-3)


def test_streamed_logprobs_are_those_of_the_whole_answer(server: str) -> None:
    client = sdk(server)
    ask: dict[str, Any] = {"model": "tiny", "messages": HELLO, "max_tokens": 8, "temperature": 0, "logprobs": True}
    whole = client.chat.completions.create(**ask)
    chunks = list(client.chat.completions.create(**ask, stream=True))
    streamed = [
        entry for c in chunks if c.choices and c.choices[0].logprobs for entry in c.choices[0].logprobs.content or []
    ]
    expected = whole.choices[0].logprobs.content  # type: ignore[union-attr]
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [
        (e.token, round(e.logprob, 4)) for e in expected or []
    ]
    assert all(e.top_logprobs == [] for e in streamed)


def test_completion_logprobs_in_the_legacy_shape(server: str, reference: Reference) -> None:
    client = sdk(server)
    prompt = "The quick brown fox"
    answer = client.completions.create(model="tiny", prompt=prompt, max_tokens=6, temperature=0, logprobs=3)
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.token_logprobs and logprobs.top_logprobs
    assert "".join(logprobs.tokens) == answer.choices[0].text
    assert logprobs.text_offset == [sum(len(t) for t in logprobs.tokens[:i]) for i in range(len(logprobs.tokens))]
    prompt_ids = list(reference.tokenizer(prompt)["input_ids"])
    steps = reference.follow(prompt_ids, list(zip(logprobs.tokens, logprobs.token_logprobs, strict=True)))
    for (token, model_logprobs), top in zip(steps, logprobs.top_logprobs, strict=True):
        assert int(model_logprobs.argmax()) == token  # greedy
        assert sorted(top.values(), reverse=True) == pytest.approx(
            torch.topk(model_logprobs, 3).values.tolist(), abs=1e-3
        )
    streamed = list(
        client.completions.create(model="tiny", prompt=prompt, max_tokens=6, temperature=0, logprobs=3, stream=True)
    )
    tokens = [t for c in streamed for t in (c.choices[0].logprobs.tokens if c.choices[0].logprobs else None) or []]
    offsets = [
        o for c in streamed for o in (c.choices[0].logprobs.text_offset if c.choices[0].logprobs else None) or []
    ]
    assert tokens == logprobs.tokens and offsets == logprobs.text_offset


def test_n_choices_repeat_with_a_seed_and_stream_with_their_index(server: str) -> None:
    client = sdk(server)
    ask: dict[str, Any] = {"model": "tiny", "messages": HELLO, "max_tokens": 10, "temperature": 1.0, "n": 3}
    first = client.chat.completions.create(**ask, seed=11)
    again = client.chat.completions.create(**ask, seed=11)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2] and len(set(texts)) > 1
    assert [c.message.content for c in again.choices] == texts
    usage = first.usage
    assert usage is not None and usage.completion_tokens >= 3  # summed over the choices
    singles = [client.chat.completions.create(**{**ask, "n": 1}, seed=11 + i).usage for i in range(3)]
    assert usage.completion_tokens == sum(u.completion_tokens for u in singles if u is not None)
    one = client.chat.completions.create(**{**ask, "n": 1}, seed=12)
    assert one.choices[0].message.content == texts[1]  # choice i has the seed + i
    streamed: dict[int, str] = {}
    finished = set()
    for chunk in client.chat.completions.create(**ask, seed=11, stream=True, stream_options={"include_usage": True}):
        if chunk.usage is not None:
            assert chunk.usage == usage
        for choice in chunk.choices:
            streamed[choice.index] = streamed.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finished.add(choice.index)
    assert [streamed[i] for i in range(3)] == texts and finished == {0, 1, 2}
    completions = client.completions.create(model="tiny", prompt="Once", max_tokens=6, n=2, seed=5)
    assert [c.index for c in completions.choices] == [0, 1]


def test_logit_bias_penalties_and_min_tokens_through_the_sdk(server: str, reference: Reference) -> None:
    client = sdk(server)
    token = reference.tokenizer.convert_tokens_to_ids("hello")
    forced = client.chat.completions.create(
        model="tiny", messages=HELLO, max_tokens=5, temperature=0, logit_bias={str(token): 100}
    )
    assert forced.choices[0].message.content == "hello" * 5
    penalised = client.chat.completions.create(
        model="tiny",
        messages=HELLO,
        max_tokens=5,
        temperature=0,
        logit_bias={str(token): 5},
        frequency_penalty=2.0,
        presence_penalty=2.0,
        extra_body={"repetition_penalty": 1.2, "min_tokens": 5},
    )
    assert penalised.usage is not None and penalised.usage.completion_tokens == 5
    assert (penalised.choices[0].message.content or "").count("hello") < 5
