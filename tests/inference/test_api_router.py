"""POST /infer over the app, on the tiny model: answers, limits, and every kind of bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from inference_api.app import create_app
from tests.conftest import ADMIN_KEY, DOCS_KEY, TINY_CONTEXT, USER_KEY, assert_error, auth, make_settings


async def test_infer_answers_with_metadata(client: httpx.AsyncClient) -> None:
    response = await client.post("/infer", json={"prompt": "Hello there", "max_new_tokens": 8}, headers=auth())
    assert response.status_code == 200, response.text
    body = response.json()
    meta = body["metadata"]
    assert isinstance(body["result"], str)
    assert meta["model"] == "tiny" and meta["version"] == "base"
    assert 0 < meta["tokens_generated"] <= 8
    assert meta["prompt_tokens"] > 3  # the chat template wraps the prompt
    assert meta["finish_reason"] in ("stop", "length")
    for timing in ("queue_time", "generation_time", "response_time"):
        assert meta[timing] >= 0
    assert meta["response_time"] >= meta["generation_time"]


async def test_chat_template_is_applied_unless_raw(client: httpx.AsyncClient) -> None:
    templated = await client.post("/infer", json={"prompt": "Hi", "max_new_tokens": 1}, headers=auth())
    raw = await client.post("/infer", json={"prompt": "Hi", "max_new_tokens": 1, "raw": True}, headers=auth())
    assert raw.json()["metadata"]["prompt_tokens"] == 1
    assert templated.json()["metadata"]["prompt_tokens"] > 5


async def test_greedy_is_deterministic_and_seed_repeats(client: httpx.AsyncClient) -> None:
    async def run(**extra: object) -> str:
        body = {"prompt": "Count", "max_new_tokens": 12, **extra}
        response = await client.post("/infer", json=body, headers=auth())
        assert response.status_code == 200, response.text
        return str(response.json()["result"])

    assert await run() == await run()
    sampled = {"do_sample": True, "temperature": 1.5, "top_k": 50, "top_p": 0.95}
    assert await run(seed=3, **sampled) == await run(seed=3, **sampled)
    outputs = {await run(seed=s, **sampled) for s in range(4)}
    assert len(outputs) > 1


async def test_beam_search_is_served(client: httpx.AsyncClient) -> None:
    body = {"prompt": "Hello", "max_new_tokens": 6, "num_beams": 3}
    response = await client.post("/infer", json=body, headers=auth())
    assert response.status_code == 200, response.text
    assert response.json()["metadata"]["tokens_generated"] <= 6


async def test_stream_sends_deltas_then_metadata(client: httpx.AsyncClient) -> None:
    body = {"prompt": "Hello", "max_new_tokens": 10}
    plain = (await client.post("/infer", json=body, headers=auth())).json()
    async with client.stream("POST", "/infer", json={**body, "stream": True}, headers=auth()) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) async for line in response.aiter_lines() if line.startswith("data: ")]
    deltas = [e["delta"] for e in events if "delta" in e]
    final = events[-1]
    assert "".join(deltas) == final["result"] == plain["result"]
    assert final["metadata"]["tokens_generated"] == plain["metadata"]["tokens_generated"]


async def test_bearer_header_is_accepted(client: httpx.AsyncClient) -> None:
    headers = {"Authorization": f"Bearer {USER_KEY}"}
    response = await client.post("/infer", json={"prompt": "Hi", "max_new_tokens": 1}, headers=headers)
    assert response.status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-API-Key": "sk-wrong-key-000000000000"}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic x"}],
)
async def test_missing_or_invalid_key_is_401(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    response = await client.post("/infer", json={"prompt": "Hi"}, headers=headers)
    assert_error(response, 401, "UNAUTHORIZED")


async def test_key_without_scope_is_403(client: httpx.AsyncClient) -> None:
    response = await client.post("/infer", json={"prompt": "Hi"}, headers=auth(DOCS_KEY))
    error = assert_error(response, 403, "FORBIDDEN")
    assert "infer" in str(error["message"])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   \n"}, "prompt"),
        ({"prompt": 42}, "prompt"),
        ({"prompt": ["a"]}, "prompt"),
        ({}, "prompt"),
        ({"prompt": "x", "max_new_tokens": 0}, "max_new_tokens"),
        ({"prompt": "x", "max_new_tokens": -3}, "max_new_tokens"),
        ({"prompt": "x", "max_new_tokens": 513}, "max_new_tokens"),
        ({"prompt": "x", "max_new_tokens": "ten"}, "max_new_tokens"),
        ({"prompt": "x", "temperature": -0.1}, "temperature"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "top_p": 1.01}, "top_p"),
        ({"prompt": "x", "top_k": -1}, "top_k"),
        ({"prompt": "x", "num_beams": 0}, "num_beams"),
        ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"prompt": "x", "unknown_field": 1}, "unknown_field"),
    ],
)
async def test_bad_fields_are_422_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, object], field: str
) -> None:
    response = await client.post("/infer", json=body, headers=auth())
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert field in str(error["message"])
    assert any(d["field"].startswith(field) for d in error["details"])  # type: ignore[attr-defined]


async def test_malformed_json_is_422(client: httpx.AsyncClient) -> None:
    headers = {**auth(), "content-type": "application/json"}
    response = await client.post("/infer", content=b'{"prompt": "x",', headers=headers)
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert "JSON" in str(error["message"])


async def test_prompt_over_max_input_tokens_is_400_with_counts(client: httpx.AsyncClient) -> None:
    prompt = "word " * 400  # MAX_INPUT_TOKENS is 200 in the test settings
    response = await client.post("/infer", json={"prompt": prompt, "raw": True}, headers=auth())
    error = assert_error(response, 400, "TOKEN_LIMIT_EXCEEDED")
    assert "MAX_INPUT_TOKENS=200" in str(error["message"])
    counted = re.search(r"has (\d+) tokens", str(error["message"]))
    assert counted and int(counted.group(1)) >= 400


async def test_prompt_plus_new_tokens_over_context_is_400_with_counts(client: httpx.AsyncClient) -> None:
    body = {"prompt": ("word " * 100).strip(), "raw": True, "max_new_tokens": 200}
    response = await client.post("/infer", json=body, headers=auth())
    error = assert_error(response, 400, "TOKEN_LIMIT_EXCEEDED")
    message = str(error["message"])
    assert "has 100 tokens" in message and "max_new_tokens is 200" in message
    assert f"context of {TINY_CONTEXT}" in message


async def test_unknown_model_or_adapter_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/infer", json={"prompt": "x", "base_model": "gpt-17"}, headers=auth())
    assert_error(response, 404, "MODEL_NOT_FOUND")
    response = await client.post("/infer", json={"prompt": "x", "adapter_version": "gamma"}, headers=auth())
    error = assert_error(response, 404, "MODEL_NOT_FOUND")
    assert "alpha" in str(error["message"])  # it lists the versions that exist


async def test_adapter_versions_change_the_output(client: httpx.AsyncClient) -> None:
    async def run(version: str | None) -> dict[str, object]:
        body = {"prompt": "Hello", "max_new_tokens": 12, "adapter_version": version}
        response = await client.post("/infer", json=body, headers=auth())
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    base, alpha, beta, base_again = await run(None), await run("alpha"), await run("beta"), await run(None)
    assert alpha["metadata"]["version"] == "alpha"  # type: ignore[index]
    assert len({base["result"], alpha["result"], beta["result"]}) == 3
    assert base_again["result"] == base["result"]


async def test_infer_before_ready_is_503(tmp_path: Path, registry_file: Path) -> None:
    app = create_app(make_settings(tmp_path / "data", registry_file), warm_up=False)
    transport = httpx.ASGITransport(app=app)
    async with LifespanManager(app), httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.post("/infer", json={"prompt": "x"}, headers=auth(ADMIN_KEY))
        assert_error(response, 503, "MODEL_NOT_READY")
        assert response.headers["retry-after"]
        ready = await http.get("/ready")
        assert_error(ready, 503, "MODEL_NOT_READY")
