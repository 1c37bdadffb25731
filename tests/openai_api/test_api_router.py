"""The official OpenAI SDK, unchanged, against a real server over a socket: answers, streams, models,
embeddings, typed errors in OpenAI's shape, and the documents extension."""

from __future__ import annotations

import math
from typing import Any

import httpx
import openai
import pytest

from inference_api.documents.grounding import NOTHING_FOUND
from tests.conftest import ADMIN_KEY, DOCS_KEY, USER_KEY, auth
from tests.documents.samples import sample
from tests.openai_api.conftest import sdk

HELLO = [{"role": "user", "content": "Say hello to the world."}]
GREEDY: dict[str, Any] = {"temperature": 0, "seed": 7}


def test_chat_completion(server: str) -> None:
    answer = sdk(server).chat.completions.create(model="tiny", messages=HELLO, max_tokens=8, user="u-1", **GREEDY)
    assert answer.object == "chat.completion" and answer.id.startswith("chatcmpl-")
    assert answer.model == "tiny"
    [choice] = answer.choices
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = answer.usage
    assert usage is not None and usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert choice.finish_reason == "length" or usage.completion_tokens < 8


def test_streamed_chat_joins_to_the_greedy_answer_and_reports_usage(server: str) -> None:
    client = sdk(server)
    whole = client.chat.completions.create(model="tiny", messages=HELLO, max_completion_tokens=12, **GREEDY)
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=HELLO,
            max_completion_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
            **GREEDY,
        )
    )
    *answer, last = chunks
    assert answer[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in answer) == whole.choices[0].message.content
    assert answer[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(c.usage is None for c in answer) and len({c.id for c in chunks}) == 1
    assert last.choices == [] and last.usage == whole.usage


def test_same_answer_as_infer_on_the_same_engine_path(server: str) -> None:
    """The chat template, the engine and greedy decoding are /infer's: the same prompt gives the same text."""
    native = httpx.post(
        f"{server}/infer",
        json={"prompt": HELLO[0]["content"], "max_new_tokens": 10, "adapter_version": "alpha"},
        headers=auth(),
        timeout=60,
    )
    assert native.status_code == 200, native.text
    answer = sdk(server).chat.completions.create(model="tiny:alpha", messages=HELLO, max_tokens=10, temperature=0)
    assert answer.model == "tiny:alpha"
    assert answer.choices[0].message.content == native.json()["result"]
    assert answer.usage is not None and answer.usage.prompt_tokens == native.json()["metadata"]["prompt_tokens"]


def test_completion_streamed_and_not(server: str) -> None:
    client = sdk(server)
    whole = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=6, stop=["\n\n"], **GREEDY)
    assert whole.object == "text_completion" and whole.id.startswith("cmpl-")
    [choice] = whole.choices
    assert choice.finish_reason in ("stop", "length") and whole.usage is not None
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    chunks = list(
        client.completions.create(
            model="tiny", prompt=["Once upon a time"], max_tokens=6, stream=True, stop="\n\n", **GREEDY
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == choice.text
    assert chunks[-1].choices[0].finish_reason == choice.finish_reason
    assert all(c.usage is None for c in chunks)  # no include_usage: no usage chunk


def test_without_max_tokens_the_answer_fills_the_context_at_most(server: str) -> None:
    answer = sdk(server).completions.create(model="tiny", prompt="word " * 150, temperature=0)
    assert answer.usage is not None
    assert answer.usage.total_tokens <= 256  # the tiny model's context; nothing over it is even attempted


def test_models_list_and_retrieve(server: str) -> None:
    client = sdk(server)
    ids = [model.id for model in client.models.list()]
    assert {"tiny", "tiny:alpha", "tiny:beta", "all-MiniLM-L6-v2"} <= set(ids)
    card = client.models.retrieve("tiny:beta")
    assert card.id == "tiny:beta" and card.object == "model" and card.owned_by == "inference-api"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("tiny:gamma")


def test_embeddings_in_both_encodings(server: str) -> None:
    client = sdk(server)
    default = client.embeddings.create(model="all-MiniLM-L6-v2", input="The vault code is 4471.")  # base64 asked
    [vector] = [d.embedding for d in default.data]
    assert len(vector) == 384 and math.isclose(math.fsum(x * x for x in vector), 1.0, rel_tol=1e-3)
    floats = client.embeddings.create(
        model="all-MiniLM-L6-v2", input=["The vault code is 4471.", "Penguins"], encoding_format="float"
    )
    assert [d.index for d in floats.data] == [0, 1]
    assert floats.data[0].embedding == pytest.approx(vector, abs=1e-6)
    assert floats.usage.prompt_tokens > default.usage.prompt_tokens > 0


def _error(exc: openai.APIStatusError) -> dict[str, Any]:
    """The body is exactly OpenAI's error object, and the request id still comes back."""
    body = exc.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] and exc.request_id == exc.response.headers["x-request-id"]
    return body["error"]  # type: ignore[no-any-return]


def test_errors_are_the_sdks_typed_exceptions_in_openais_shape(server: str) -> None:
    with pytest.raises(openai.AuthenticationError) as unauthenticated:
        sdk(server, key="sk-wrong-0123456789abcdef01").chat.completions.create(model="tiny", messages=HELLO)
    assert _error(unauthenticated.value)["code"] == "invalid_api_key"
    with pytest.raises(openai.PermissionDeniedError) as forbidden:
        sdk(server, key=DOCS_KEY).completions.create(model="tiny", prompt="Hi")
    assert _error(forbidden.value)["type"] == "permission_error"
    with pytest.raises(openai.NotFoundError) as unknown:
        sdk(server).chat.completions.create(model="tiny:gamma", messages=HELLO)
    assert _error(unknown.value) | {"message": ""} == {
        "message": "",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    with pytest.raises(openai.NotFoundError) as unknown_embedder:
        sdk(server).embeddings.create(model="text-embedding-3-small", input="x")
    assert _error(unknown_embedder.value)["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("call", "param"),
    [
        ({"n": 17}, "n"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0"),
        ({"max_tokens": 10_000}, "max_tokens"),
        ({"max_completion_tokens": 10_000}, "max_completion_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"tools": [{"type": "function", "function": {"name": "no spaces"}}]}, "tools.0.function.name"),
    ],
)
def test_bad_parameters_are_bad_requests_naming_the_parameter(server: str, call: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        sdk(server).chat.completions.create(**{"model": "tiny", "messages": HELLO, **call})
    error = _error(refused.value)
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_context_length_exceeded(server: str) -> None:
    client = sdk(server)
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model="tiny", prompt="word " * 300, max_tokens=4)
    assert _error(too_long.value)["code"] == "context_length_exceeded" and "MAX_INPUT_TOKENS" in str(too_long.value)
    with pytest.raises(openai.BadRequestError) as no_room:
        client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=250)
    assert _error(no_room.value)["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as embedding_too_long:
        client.embeddings.create(model="all-MiniLM-L6-v2", input="word " * 400)
    assert _error(embedding_too_long.value)["code"] == "context_length_exceeded"


def test_native_routes_keep_the_native_envelope(server: str) -> None:
    v1 = httpx.get(f"{server}/v1/nowhere", headers=auth(), timeout=10)
    native = httpx.post(f"{server}/infer", json={"prompt": "x"}, timeout=10)
    assert v1.status_code == 404 and set(v1.json()["error"]) == {"message", "type", "param", "code"}
    assert native.status_code == 401 and native.json()["error"]["code"] == "UNAUTHORIZED"
    assert native.json()["error"]["request_id"] == native.headers["x-request-id"]


def test_chat_completion_from_the_callers_documents(server: str) -> None:
    name, data = sample("md")
    uploaded = httpx.post(f"{server}/upload", files={"file": (name, data)}, headers=auth(ADMIN_KEY), timeout=120)
    assert uploaded.status_code == 200, uploaded.text
    document_id = uploaded.json()["document_id"]
    client = sdk(server, key=ADMIN_KEY)
    question = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the access code of the Zanzibar vault?"},
    ]
    extension = {"use_documents": True}
    answer = client.chat.completions.create(model="tiny", messages=question, max_tokens=4, extra_body=extension)
    sources = answer.model_dump()["sources"]
    assert sources[0]["document_id"] == document_id and "4471" in sources[0]["excerpt"]
    assert answer.usage is not None and answer.usage.prompt_tokens > 40  # the chunk went into the prompt
    # Each answer says whether it draws on its sources (the tiny random model's rarely does).
    assert isinstance(answer.model_dump()["choices"][0]["grounded"], bool)
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=question, max_tokens=4, stream=True, extra_body=extension, **GREEDY
        )
    )
    assert chunks[-1].model_dump()["sources"] == sources
    assert isinstance(chunks[-1].model_dump()["grounded"], bool)
    # Another key's documents are not this caller's; nothing relevant is said, not made up.
    elsewhere = sdk(server, key=USER_KEY).chat.completions.create(model="tiny", messages=question, extra_body=extension)
    assert elsewhere.choices[0].message.content == NOTHING_FOUND
    assert elsewhere.model_dump()["sources"] == [] and elsewhere.usage is not None
    assert elsewhere.usage.completion_tokens == 0
    assert elsewhere.model_dump()["choices"][0]["grounded"] is None  # nothing to draw on: the fixed answer
    without = client.chat.completions.create(model="tiny", messages=question, max_tokens=4)
    assert without.model_dump().get("sources") is None
    assert without.model_dump()["choices"][0].get("grounded") is None
