"""max_new_tokens defaults under a low MAX_NEW_TOKENS (found by the fuzz pass: every request that did not send the
field, and every chat start with a message, was refused with 422 when MAX_NEW_TOKENS was below 128)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from inference_api.app import create_app
from tests.conftest import assert_error, auth, make_settings, wait_ready

LIMIT = 6


@pytest.fixture
async def low_limit(tmp_path: Path, registry_file: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(tmp_path / "data", registry_file, max_new_tokens=LIMIT))
    async with (
        LifespanManager(app, startup_timeout=120),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=60) as http,
    ):
        await wait_ready(http)
        yield http


async def test_unsent_max_new_tokens_defaults_within_the_limit(low_limit: httpx.AsyncClient) -> None:
    response = await low_limit.post("/infer", json={"prompt": "Say something long.", "raw": True}, headers=auth())
    assert response.status_code == 200, response.text
    assert 0 < response.json()["metadata"]["tokens_generated"] <= LIMIT


async def test_chat_start_with_a_message_fits_the_limit(low_limit: httpx.AsyncClient) -> None:
    response = await low_limit.post("/chat/start", json={"message": "Hello there"}, headers=auth())
    assert response.status_code == 200, response.text
    assert response.json()["reply"]["usage"]["tokens_generated"] <= LIMIT


async def test_an_explicit_value_over_the_limit_is_still_refused(low_limit: httpx.AsyncClient) -> None:
    response = await low_limit.post("/infer", json={"prompt": "hi", "max_new_tokens": LIMIT + 1}, headers=auth())
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert f"at most {LIMIT} (MAX_NEW_TOKENS)" in str(error["message"])
