"""Token quotas: reserved before the queue, settled with what was generated, refunded on failure or cancellation."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from inference_api.auth.keys import ApiKeyStore
from inference_api.engine.queue import RequestQueue
from inference_api.engine.service import Engine
from inference_api.engine.types import Completion, GenerationRequest, SamplingParams
from inference_api.errors import ErrorCode, ServiceError
from inference_api.modeling.registry import ModelRef
from inference_api.observability.metrics import Metrics
from inference_api.quotas.service import TokenQuotas
from inference_api.quotas.store import MemoryQuotaStore
from inference_api.settings import ApiKeyConfig
from tests.conftest import TEST_KEYS, RedisServer, assert_error, auth, make_settings, serving

REF = ModelRef("tiny", "base")


def quota_key(name: str = "alice", **limits: int) -> ApiKeyConfig:
    return ApiKeyConfig(name=name, key=f"sk-{name}-0123456789abcdef", **limits)  # type: ignore[arg-type]


async def infer(http: httpx.AsyncClient, key: ApiKeyConfig, max_new_tokens: int) -> httpx.Response:
    body = {"prompt": "Tell me a story", "max_new_tokens": max_new_tokens}
    return await http.post("/infer", json=body, headers=auth(key.key or ""))


async def day_usage(http: httpx.AsyncClient, key: ApiKeyConfig) -> dict[str, Any]:
    response = await http.get("/usage", headers=auth(key.key or ""))
    assert response.status_code == 200, response.text
    day: dict[str, Any] = response.json()["tokens"]["day"]
    return day


async def test_a_quota_of_100_tokens(tmp_path: Path, registry_file: Path) -> None:
    alice = quota_key(tokens_per_day=100)
    settings = make_settings(tmp_path / "data", registry_file, api_keys=[*TEST_KEYS, alice], tokens_per_minute=5000)
    async with serving(settings, ready=True) as http:
        first = await infer(http, alice, 60)
        assert first.status_code == 200, first.text
        spent = first.json()["metadata"]["tokens_generated"]
        assert 1 <= spent <= 60
        usage = (await http.get("/usage", headers=auth(alice.key or ""))).json()
        assert usage["key"] == "alice"
        assert usage["tokens"]["day"] | {"resets_at": None, "resets_in": None} == {
            "used": spent,
            "reserved": 0,
            "limit": 100,
            "remaining": 100 - spent,
            "resets_at": None,
            "resets_in": None,
        }
        assert 0 < usage["tokens"]["day"]["resets_in"] <= 86400
        assert usage["tokens"]["minute"]["limit"] == 5000  # TOKENS_PER_MINUTE, the default
        assert usage["tokens"]["minute"]["used"] == spent

        # One token more than is left: refused before it is queued, and it takes nothing.
        refused = await infer(http, alice, 100 - spent + 1)
        error = assert_error(refused, 429, "RATE_LIMITED")
        assert error["message"].startswith(
            f"token quota exceeded: 100 tokens per day for key 'alice' ({spent} used or reserved, "
            f"max_new_tokens={100 - spent + 1} asked for); resets in "
        )
        assert 1 <= int(refused.headers["retry-after"]) <= 86400
        assert (await day_usage(http, alice))["used"] == spent
        chat = await http.post("/chat/start", json={"message": "hello"}, headers=auth(alice.key or ""))
        assert_error(chat, 429, "RATE_LIMITED")  # chat turns reserve the same budget
        usage = await day_usage(http, alice)
        assert (usage["used"], usage["reserved"]) == (spent, 0)

        # Exactly what is left fits.
        last = await infer(http, alice, 100 - spent)
        assert last.status_code == 200, last.text
        total = spent + last.json()["metadata"]["tokens_generated"]
        assert (await day_usage(http, alice))["used"] == total

        whole = assert_error(await infer(http, alice, 150), 429, "RATE_LIMITED")
        assert "max_new_tokens=150 is more than the whole quota of 100 tokens per day" in whole["message"]
        # Keys without a quota are unaffected.
        other = await http.post("/infer", json={"prompt": "Hi", "max_new_tokens": 150}, headers=auth())
        assert other.status_code == 200


async def test_a_streamed_chat_turn_over_the_quota_is_a_429_before_the_stream(
    tmp_path: Path, registry_file: Path
) -> None:
    alice = quota_key(tokens_per_day=50)
    settings = make_settings(tmp_path / "data", registry_file, api_keys=[*TEST_KEYS, alice])
    async with serving(settings, ready=True) as http:
        headers = auth(alice.key or "")
        started = await http.post("/chat/start", json={}, headers=headers)
        assert started.status_code == 200, started.text
        session = started.json()["sessionId"]
        body = {"message": "Tell me a story", "stream": True, "max_new_tokens": 60}
        refused = await http.post(f"/chat/{session}/messages", json=body, headers=headers)
        error = assert_error(refused, 429, "RATE_LIMITED")
        assert "50 tokens per day for key 'alice'" in error["message"] and refused.headers["retry-after"]
        assert (await day_usage(http, alice))["used"] == 0
        streamed = await http.post(f"/chat/{session}/messages", json=body | {"max_new_tokens": 8}, headers=headers)
        assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
        assert "event: error" not in streamed.text
        assert 1 <= (await day_usage(http, alice))["used"] <= 8


async def test_replicas_sharing_redis_share_one_quota(
    tmp_path: Path, registry_file: Path, redis_server: RedisServer
) -> None:
    key = quota_key(f"shared-{uuid.uuid4().hex[:8]}", tokens_per_day=100)  # the Redis server outlives this test
    settings = [
        make_settings(tmp_path / f"data-{i}", registry_file, api_keys=[key], redis_url=redis_server.url)
        for i in range(2)
    ]
    async with serving(settings[0], ready=True) as one, serving(settings[1], ready=True) as two:
        first = await infer(one, key, 60)
        assert first.status_code == 200, first.text
        spent = first.json()["metadata"]["tokens_generated"]
        assert (await day_usage(two, key))["used"] == spent
        assert_error(await infer(two, key, 100 - spent + 1), 429, "RATE_LIMITED")
        assert (await infer(two, key, 100 - spent)).status_code == 200
        usage = await day_usage(one, key)
        assert usage["reserved"] == 0 and spent < usage["used"] <= 100


def request_for(owner: str, max_new_tokens: int) -> GenerationRequest:
    return GenerationRequest(REF, [1, 2, 3], SamplingParams(max_new_tokens=max_new_tokens), owner=owner)


def completion(tokens: int) -> Completion:
    return Completion("text", "length", REF, 3, tokens, 0.0, 0.0)


@pytest.fixture
def quotas(tmp_path: Path, registry_file: Path) -> TokenQuotas:
    alice = quota_key(tokens_per_minute=50)
    settings = make_settings(tmp_path / "data", registry_file, api_keys=[alice])
    return TokenQuotas(MemoryQuotaStore(), ApiKeyStore([alice]), settings)


async def counts(quotas: TokenQuotas) -> tuple[int, int]:
    minute, _ = await quotas.usage("alice")
    return minute.counts.used, minute.counts.reserved


async def test_reservations_settle_with_what_was_generated(quotas: TokenQuotas) -> None:
    done, failed, cancelled = request_for("alice", 20), request_for("alice", 20), request_for("alice", 10)
    for request in (done, failed, cancelled):
        await quotas.reserve(request)
    assert await counts(quotas) == (0, 50)
    with pytest.raises(ServiceError) as refused:
        await quotas.reserve(request_for("alice", 1))
    assert refused.value.code == ErrorCode.RATE_LIMITED and "50 tokens per minute" in refused.value.message

    done.emit(completion(7))
    failed.fail(ErrorCode.OUT_OF_MEMORY, "no memory")
    engine: Any = SimpleNamespace(queue=RequestQueue(4), metrics=Metrics(), _unanswered=set(), upstream=None)
    Engine.cancel(engine, cancelled)
    cancelled.emit(completion(10))  # a worker finishing a step after the cancel charges nothing more
    assert await counts(quotas) == (7, 0)
    assert quotas.generated["alice"] == 7 and quotas.rejected == 1


async def test_a_caller_that_leaves_while_reserving_leaves_nothing_reserved(quotas: TokenQuotas) -> None:
    task = asyncio.ensure_future(quotas.reserve(request_for("alice", 30)))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(5):
        await asyncio.sleep(0)
    assert await counts(quotas) == (0, 0)
