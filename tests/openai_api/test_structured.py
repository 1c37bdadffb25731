"""Structured outputs through the official SDK against a real server: the grammar holds every row to its format,
closes the JSON within the budget, and refuses what it cannot compile before anything is queued."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from pydantic import BaseModel

from inference_api.app import create_app
from tests.conftest import USER_KEY, make_settings
from tests.openai_api.conftest import sdk, serving

HELLO = [{"role": "user", "content": "Describe a customer order."}]


class Size(StrEnum):
    small = "small"
    medium = "medium"
    large = "large"


class Line(BaseModel):
    product: str
    quantity: int
    size: Size


class Customer(BaseModel):
    name: str
    city: str


class Order(BaseModel):
    customer: Customer
    lines: list[Line]
    gift: bool
    notes: list[str]


PROMPTS = [
    f"Write the order of {who} who bought {what}."
    for who in ("Ada", "Bob", "Chen", "Dana", "Emil")
    for what in ("two shirts", "a lamp and a rug", "three mugs", "a bicycle")
]


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory, default_model_dir: Path) -> Iterator[str]:
    """The bundled SmolLM2-135M-Instruct (already prepared for the tests) behind uvicorn."""
    folder = tmp_path_factory.mktemp("structured")
    registry = folder / "models.yaml"
    registry.write_text(yaml.safe_dump({"models": [{"name": "smol", "path": str(default_model_dir)}]}))
    settings = make_settings(
        folder / "data", registry, default_model="smol", max_input_tokens=2000, request_timeout=600.0
    )
    with serving(create_app(settings)) as url:
        yield url


@pytest.mark.real_model
def test_sdk_parse_gives_a_valid_nested_object_for_every_prompt(real_server: str) -> None:
    """Sampled (temperature 0.7, a seed each), 160 tokens at most: 20 prompts, 20 parsed objects."""
    # A generous timeout: 20 sampled answers of up to 160 tokens share two CPU cores with the rest of the suite.
    client = openai.OpenAI(base_url=f"{real_server}/v1", api_key=USER_KEY, max_retries=0, timeout=600)

    def ask(index: int) -> tuple[str | None, Order | None]:
        completion = client.chat.completions.parse(
            model="smol",
            messages=[{"role": "user", "content": PROMPTS[index]}],
            response_format=Order,
            temperature=0.7,
            seed=index,
            max_tokens=160,
        )
        choice = completion.choices[0]
        return choice.finish_reason, choice.message.parsed

    with ThreadPoolExecutor(max_workers=len(PROMPTS)) as pool:  # one batch
        results = list(pool.map(ask, range(len(PROMPTS))))
    assert [reason for reason, _ in results] == ["stop"] * len(PROMPTS)
    assert all(isinstance(parsed, Order) for _, parsed in results)


@pytest.mark.real_model
def test_json_object_is_parseable_json(real_server: str) -> None:
    client = openai.OpenAI(base_url=f"{real_server}/v1", api_key=USER_KEY, max_retries=0, timeout=600)
    completion = client.chat.completions.create(
        model="smol",
        messages=[{"role": "user", "content": "Give a JSON object describing a cat."}],
        response_format={"type": "json_object"},
        max_tokens=60,
    )
    content = completion.choices[0].message.content
    assert content is not None and isinstance(json.loads(content), dict)


SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["title", "tags"],
    "additionalProperties": False,
}


def test_the_tiny_random_model_closes_its_json_only_when_closing_is_on(server: str) -> None:
    """A random 2-layer model wanders inside strings for ever: with closing on, every answer still parses within
    30 tokens; with it off (the request's switch), they run out of tokens mid-JSON."""
    client = sdk(server)

    def ask(seed: int, closing: bool) -> tuple[str | None, str]:
        completion = client.chat.completions.create(
            model="tiny",
            messages=HELLO,
            response_format={"type": "json_schema", "json_schema": {"name": "doc", "schema": SCHEMA}},
            temperature=1.0,
            seed=seed,
            max_tokens=30,
            extra_body={"close_within_budget": closing},
        )
        return completion.choices[0].finish_reason, completion.choices[0].message.content or ""

    closed = [ask(seed, True) for seed in range(6)]
    assert all(reason == "stop" for reason, _ in closed), closed
    for _, content in closed:
        value = json.loads(content)
        assert set(value) == {"title", "tags"} and isinstance(value["tags"], list)
    cut = [ask(seed, False) for seed in range(6)]
    assert sum(reason == "length" for reason, _ in cut) >= 4, cut


def test_a_schema_that_cannot_compile_is_refused_before_anything_is_queued(server: str) -> None:
    served = _served(server)
    with pytest.raises(openai.BadRequestError) as refused:
        sdk(server).chat.completions.create(
            model="tiny",
            messages=HELLO,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
        )
    error = refused.value.body
    assert isinstance(error, dict) and error["type"] == "invalid_request_error"
    assert "response_format" in error["message"] and "nonsense" in error["message"]
    with pytest.raises(openai.BadRequestError) as bad_regex:
        sdk(server).chat.completions.create(model="tiny", messages=HELLO, extra_body={"guided_regex": "(unclosed"})
    assert "guided_regex" in str(bad_regex.value)
    with pytest.raises(openai.BadRequestError):
        sdk(server).chat.completions.create(
            model="tiny",
            messages=HELLO,
            response_format={"type": "json_object"},
            extra_body={"guided_choice": ["a", "b"]},
        )
    assert _served(server) == served


def test_guided_choice_and_regex_hold(server: str) -> None:
    client = sdk(server)
    for seed in range(4):
        choice = client.chat.completions.create(
            model="tiny",
            messages=HELLO,
            temperature=1.0,
            seed=seed,
            max_tokens=20,
            extra_body={"guided_choice": ["positive", "negative", "neutral"]},
        )
        assert choice.choices[0].message.content in {"positive", "negative", "neutral"}
        code = client.completions.create(
            model="tiny",
            prompt="Code:",
            temperature=1.0,
            seed=seed,
            max_tokens=20,
            extra_body={"guided_regex": "[A-Z]{3}-[0-9]{4}"},
        )
        assert re.fullmatch("[A-Z]{3}-[0-9]{4}", code.choices[0].text), code.choices[0].text


def test_infer_takes_the_same_response_format(server: str) -> None:
    response = httpx.post(
        f"{server}/infer",
        headers={"X-API-Key": USER_KEY},
        json={
            "prompt": "A document, please.",
            "max_new_tokens": 40,
            "do_sample": True,
            "seed": 3,
            "response_format": {"type": "json_schema", "json_schema": {"name": "doc", "schema": SCHEMA}},
        },
        timeout=60,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert set(json.loads(body["result"])) == {"title", "tags"}
    refused = httpx.post(
        f"{server}/infer",
        headers={"X-API-Key": USER_KEY},
        json={"prompt": "x", "response_format": {"type": "regex"}},
        timeout=60,
    )
    assert refused.status_code == 422 and "regex" in refused.text


def _served(url: str) -> int:
    status = httpx.get(f"{url}/status", headers={"X-API-Key": USER_KEY}, timeout=10).json()
    return sum(worker["served"] + worker["failed"] for worker in status["workers"])
