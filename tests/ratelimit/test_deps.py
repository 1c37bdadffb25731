"""Rate limits on every route: per key (client address without one), stricter on generation routes, probes exempt."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx

from inference_api.ratelimit.service import GENERATION_ROUTES
from inference_api.settings import ApiKeyConfig
from tests.conftest import TEST_KEYS, RedisServer, assert_error, auth, make_settings, serving


def assert_limit_headers(response: httpx.Response, limit: int, remaining: int) -> None:
    assert response.headers["x-ratelimit-limit"] == str(limit)
    assert response.headers["x-ratelimit-remaining"] == str(remaining)
    reset = int(response.headers["x-ratelimit-reset"])
    assert time.time() <= reset <= time.time() + 61


async def test_the_sixth_request_in_a_minute_is_refused(tmp_path: Path, registry_file: Path) -> None:
    settings = make_settings(tmp_path / "data", registry_file, rate_limit="5/minute")
    async with serving(settings) as http:
        for sent in range(1, 6):
            response = await http.get("/models", headers=auth())
            assert response.status_code == 200
            assert_limit_headers(response, 5, 5 - sent)
        refused = await http.get("/chat", headers=auth())  # one budget for the key across routes
        error = assert_error(refused, 429, "RATE_LIMITED")
        assert error["message"].startswith("rate limit exceeded: 5 per 1 minute for key 'user'; retry in ")
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert_limit_headers(refused, 5, 0)
        # Another key has a budget of its own; probes are never limited.
        assert (await http.get("/models", headers=auth(TEST_KEYS[0].key or ""))).status_code == 200
        for _ in range(10):
            assert (await http.get("/health")).status_code == 200
            assert "x-ratelimit-limit" not in (await http.get("/ready")).headers


async def test_callers_without_a_valid_key_are_limited_by_address(tmp_path: Path, registry_file: Path) -> None:
    settings = make_settings(tmp_path / "data", registry_file, rate_limit="3/minute")
    async with serving(settings) as http:
        for _ in range(3):
            assert_error(await http.get("/models", headers=auth("sk-wrong-key-0123456789abcdef")), 401, "UNAUTHORIZED")
        error = assert_error(await http.get("/models"), 429, "RATE_LIMITED")
        assert "for client 127.0.0.1" in error["message"]
        assert (await http.get("/models", headers=auth())).status_code == 200  # the key's own budget


async def test_generation_routes_have_the_stricter_limit(tmp_path: Path, registry_file: Path) -> None:
    assert {"/infer", "/chat/start", "/chat/{session_id}/messages", "/v1/chat/completions"} <= GENERATION_ROUTES
    settings = make_settings(tmp_path / "data", registry_file, rate_limit="20/minute", rate_limit_generation="2/minute")
    async with serving(settings, ready=True) as http:
        body = {"prompt": "Hi", "max_new_tokens": 2}
        first = await http.post("/infer", json=body, headers=auth())
        assert first.status_code == 200
        assert_limit_headers(first, 2, 1)  # the limit closest to running out
        started = await http.post("/chat/start", json={}, headers=auth())
        assert started.status_code == 200
        error = assert_error(await http.post("/infer", json=body, headers=auth()), 429, "RATE_LIMITED")
        assert "2 per 1 minute on generation routes for key 'user'" in error["message"]
        listed = await http.get("/chat", headers=auth())  # other routes still have RATE_LIMIT's budget
        assert listed.status_code == 200
        assert_limit_headers(listed, 20, 16)


async def test_a_key_with_its_own_rate_limit_is_held_to_it(tmp_path: Path, registry_file: Path) -> None:
    keys = [*TEST_KEYS, ApiKeyConfig(name="bulk", key="sk-test-bulk-0123456789abcdef", rate_limit="50/minute")]
    settings = make_settings(
        tmp_path / "data", registry_file, api_keys=keys, rate_limit="2/minute", rate_limit_generation="1/minute"
    )
    async with serving(settings, ready=True) as http:
        for _ in range(4):
            response = await http.post(
                "/infer", json={"prompt": "Hi", "max_new_tokens": 2}, headers=auth(keys[-1].key or "")
            )
            assert response.status_code == 200
        assert_limit_headers(response, 50, 46)
        usage = (await http.get("/usage", headers=auth(keys[-1].key or ""))).json()
        assert usage["requests"] == [
            {
                "limit": "50 per 1 minute",
                "applies_to": "all routes",
                "remaining": 45,
                "resets_in": usage["requests"][0]["resets_in"],
            }
        ]


async def test_replicas_sharing_redis_share_one_budget(
    tmp_path: Path, registry_file: Path, redis_server: RedisServer
) -> None:
    name = f"shared-{uuid.uuid4().hex[:8]}"  # the Redis server outlives this test: a budget of its own
    key = ApiKeyConfig(name=name, key=f"sk-{name}-0123456789abcdef")
    settings = [
        make_settings(
            tmp_path / f"data-{i}", registry_file, api_keys=[key], rate_limit="5/minute", redis_url=redis_server.url
        )
        for i in range(2)
    ]
    async with serving(settings[0]) as one, serving(settings[1]) as two:
        statuses = []
        for http in (one, two, one, two, one):
            statuses.append((await http.get("/models", headers=auth(key.key or ""))).status_code)
        assert statuses == [200] * 5
        refused = await two.get("/models", headers=auth(key.key or ""))
        assert_error(refused, 429, "RATE_LIMITED")
        assert_limit_headers(refused, 5, 0)
        assert_error(await one.get("/models", headers=auth(key.key or "")), 429, "RATE_LIMITED")
