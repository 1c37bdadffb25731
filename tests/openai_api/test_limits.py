"""The /v1 routes are charged to the same token quotas and rate limits as the native ones, seen through the SDK."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from inference_api.app import create_app
from inference_api.settings import ApiKeyConfig
from tests.conftest import TEST_KEYS, make_settings
from tests.openai_api.conftest import sdk, serving

QUOTA_KEY = ApiKeyConfig(name="carol", key="sk-carol-0123456789abcdef", tokens_per_day=40)  # type: ignore[call-arg]
LIMITED_KEY = ApiKeyConfig(name="dave", key="sk-dave-0123456789abcdef", rate_limit="3/minute")  # type: ignore[call-arg]


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory, registry_file_module: Path) -> Iterator[str]:
    settings = make_settings(
        tmp_path_factory.mktemp("limits") / "data", registry_file_module, api_keys=[*TEST_KEYS, QUOTA_KEY, LIMITED_KEY]
    )
    with serving(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="module")
def registry_file_module(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    path = tmp_path_factory.mktemp("registry") / "models.yaml"
    path.write_text(f"models:\n  - name: tiny\n    path: {tiny_model_dir}\n")
    return path


def day_used(url: str) -> int:
    usage = httpx.get(f"{url}/usage", headers={"Authorization": f"Bearer {QUOTA_KEY.key}"}, timeout=30).json()
    used: int = usage["tokens"]["day"]["used"]
    return used


def test_completions_are_charged_to_the_keys_token_quota(limited_server: str) -> None:
    client = sdk(limited_server, QUOTA_KEY.key or "")
    generated = 0
    for _ in range(2):
        answer = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=16, temperature=0)
        assert answer.usage is not None
        generated += answer.usage.completion_tokens
    assert day_used(limited_server) == generated
    # 32 at most are spent: another 16 would pass the 40 of the day, streamed or not, as a 429 before any chunk.
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=16, temperature=0, stream=True
        )
    assert "40 tokens per day" in refused.value.message
    assert refused.value.response.headers.get("retry-after")
    assert day_used(limited_server) == generated  # the refusal took nothing


def test_v1_routes_count_against_the_keys_rate_limit(limited_server: str) -> None:
    client = sdk(limited_server, LIMITED_KEY.key or "")
    for _ in range(3):
        client.models.list()
    with pytest.raises(openai.RateLimitError) as refused:
        client.models.list()
    assert refused.value.body is not None and refused.value.code == "rate_limit_exceeded"
    assert int(refused.value.response.headers["retry-after"]) >= 1
