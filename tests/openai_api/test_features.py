"""The SDK features beyond text, through the official SDK against a real server on the tiny model: log-probabilities
(recomputed here from the model itself), n choices, logit processors, tools."""

from __future__ import annotations

import json
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


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


def _valid_weather(arguments: str) -> None:
    import jsonschema

    jsonschema.validate(json.loads(arguments), WEATHER["function"]["parameters"])  # type: ignore[index]


def test_tool_choice_required_gives_calls_whose_arguments_validate(server: str) -> None:
    client = sdk(server)
    for seed in range(3):
        answer = client.chat.completions.create(
            model="tiny",
            messages=ASK_WEATHER,
            tools=[WEATHER, TIME],  # type: ignore[list-item]
            tool_choice="required",
            max_tokens=80,
            temperature=0.8,
            seed=seed,
        )
        choice = answer.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None, repr(choice.message.content)
        calls = choice.message.tool_calls
        assert calls and all(c.function.name in ("get_weather", "get_time") for c in calls)  # type: ignore[union-attr]
        for call in calls:
            if call.function.name == "get_weather":  # type: ignore[union-attr]
                _valid_weather(call.function.arguments)  # type: ignore[union-attr]
    named = client.chat.completions.create(
        model="tiny",
        messages=ASK_WEATHER,
        tools=[WEATHER, TIME],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=60,
        temperature=0.8,
        seed=1,
    )
    [call] = named.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather" and call.id.startswith("call_")  # type: ignore[union-attr]
    _valid_weather(call.function.arguments)  # type: ignore[union-attr]


def test_a_conversation_with_a_tool_result_continues(server: str) -> None:
    client = sdk(server)
    ask: dict[str, Any] = {"model": "tiny", "tools": [WEATHER], "max_tokens": 60, "temperature": 0}
    first = client.chat.completions.create(
        messages=ASK_WEATHER, tool_choice={"type": "function", "function": {"name": "get_weather"}}, **ask
    )
    call = (first.choices[0].message.tool_calls or [])[0]
    conversation = [
        *ASK_WEATHER,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'},
    ]
    second = client.chat.completions.create(messages=conversation, tool_choice="none", **ask)
    assert second.choices[0].message.content and second.choices[0].message.tool_calls is None
    alone = client.chat.completions.create(messages=ASK_WEATHER, tool_choice="none", **{**ask, "max_tokens": 1})
    assert second.usage is not None and alone.usage is not None
    assert second.usage.prompt_tokens > alone.usage.prompt_tokens + 15  # the call and its result are in the prompt
    streamed = list(
        client.chat.completions.create(
            messages=ASK_WEATHER, tool_choice="required", stream=True, **{**ask, "max_tokens": 80}
        )
    )
    deltas = [d for c in streamed for d in (c.choices[0].delta.tool_calls or []) if c.choices]
    assert deltas and deltas[0].function and deltas[0].function.name in ("get_weather",)
    _valid_weather(deltas[0].function.arguments or "")
    assert streamed[-1].choices[0].finish_reason == "tool_calls"
