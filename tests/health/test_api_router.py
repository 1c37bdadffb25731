"""GET /health, /ready and /status over the app."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from inference_api import __version__
from inference_api.app import create_app
from inference_api.modeling.builtin import BUILTIN_MODEL
from inference_api.settings import Settings
from tests.conftest import ADMIN_KEY, DOCS_KEY, USER_KEY, assert_error, auth

STATUS_KEYS = {
    "service",
    "version",
    "status",
    "timestamp",
    "prometheus_available",
    "cached_models",
    "device",
    "cached_model_info",
    "queue",
    "workers",
    "memory",
}


async def get_status(client: httpx.AsyncClient, key: str = USER_KEY) -> dict[str, Any]:
    response = await client.get("/status", headers=auth(key))
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


@pytest.fixture
async def idle_app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The app started without loading the default model: never ready."""
    app = create_app(settings, warm_up=False)
    async with LifespanManager(app):
        yield app


async def test_health_is_open(client: httpx.AsyncClient) -> None:
    before = time.time()
    response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert set(body) == {"status", "timestamp"}
    assert before - 1 <= body["timestamp"] <= time.time() + 1


async def test_ready_once_the_default_model_is_loaded(client: httpx.AsyncClient) -> None:
    response = await client.get("/ready")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert body["model"] == "tiny:base"
    assert abs(body["timestamp"] - time.time()) < 5


async def test_not_ready_before_the_default_model_loads(idle_app: FastAPI) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=idle_app), base_url="http://test") as client:
        response = await client.get("/ready")
        error = assert_error(response, 503, "MODEL_NOT_READY")
        assert response.headers["retry-after"] == "5"
        assert "starting" in str(error["message"])
        # Liveness does not depend on the model.
        assert (await client.get("/health")).status_code == 200
        status = await get_status(client)
        assert status["status"] == "starting"
        assert status["cached_models"] == 0


async def test_not_ready_once_stopped(settings: Settings) -> None:
    app = create_app(settings, warm_up=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        async with LifespanManager(app):
            pass
        response = await client.get("/ready")
        assert_error(response, 503, "SHUTTING_DOWN")
        assert response.headers["retry-after"] == "5"
        assert (await client.get("/health")).status_code == 200


async def test_status_needs_a_key(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/status"), 401, "UNAUTHORIZED")
    assert_error(await client.get("/status", headers=auth("sk-wrong-0123456789abcdef")), 401, "UNAUTHORIZED")
    # Any valid key will do: /status needs no particular scope.
    assert (await client.get("/status", headers=auth(DOCS_KEY))).status_code == 200


async def test_status_shape(client: httpx.AsyncClient, settings: Settings) -> None:
    before = time.time()
    status = await get_status(client)
    assert set(status) >= STATUS_KEYS
    assert status["service"] == "inference-api"
    assert status["version"] == __version__
    assert status["status"] == "ready"
    assert isinstance(status["timestamp"], float) and status["timestamp"] >= before - 1
    assert isinstance(status["prometheus_available"], bool)
    assert status["cached_models"] == 1
    assert status["device"] == "cpu"

    info = status["cached_model_info"]
    assert isinstance(info, list)
    assert all(set(entry) == {"base_model", "version", "loaded"} for entry in info)
    pairs = {(e["base_model"], e["version"]): e["loaded"] for e in info}
    assert pairs == {
        ("tiny", "base"): True,
        ("tiny", "alpha"): False,
        ("tiny", "beta"): False,
        ("tiny-copy", "base"): False,
        (BUILTIN_MODEL, "base"): False,
    }
    assert len(info) == len(pairs)

    queue = status["queue"]
    assert isinstance(queue, dict)
    assert queue["depth"] == 0
    assert queue["max"] == settings.max_queue

    workers = status["workers"]
    assert isinstance(workers, list) and len(workers) == 1
    (worker,) = workers
    assert worker["device"] == "cpu"
    assert worker["busy"] is False
    assert worker["cached_models"] == ["tiny:base"]
    for counter in ("served", "failed", "cancelled", "tokens_generated"):
        assert isinstance(worker[counter], int) and worker[counter] >= 0

    memory = status["memory"]
    assert isinstance(memory, dict)
    assert memory["process_rss_bytes"] > 0
    assert memory["system_total_bytes"] >= memory["system_available_bytes"] > 0


async def test_status_counts_served_requests(client: httpx.AsyncClient) -> None:
    (before,) = (await get_status(client))["workers"]
    response = await client.post("/infer", json={"prompt": "Hello", "max_new_tokens": 3}, headers=auth())
    assert response.status_code == 200, response.text
    generated = response.json()["metadata"]["tokens_generated"]
    (after,) = (await get_status(client))["workers"]
    assert after["served"] == before["served"] + 1
    assert after["tokens_generated"] == before["tokens_generated"] + generated
    assert after["failed"] == before["failed"]


async def test_status_reflects_a_loaded_model(client: httpx.AsyncClient) -> None:
    response = await client.post("/models/tiny-copy/load", headers=auth(ADMIN_KEY))
    assert response.status_code == 200, response.text
    status = await get_status(client)
    assert status["cached_models"] == 2
    loaded = {(e["base_model"], e["version"]) for e in status["cached_model_info"] if e["loaded"]}
    assert loaded == {("tiny", "base"), ("tiny-copy", "base")}
