"""Greedy output of a request inside a busy batch equals the same request alone (real model, float32)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from bench.invariance import PROMPTS

from inference_api.app import create_app
from inference_api.settings import Settings
from tests.conftest import TEST_KEYS, auth, wait_ready

pytestmark = pytest.mark.real_model


async def test_greedy_output_in_a_busy_batch_equals_output_alone(
    shared_data_dir: Path, default_model_dir: Path
) -> None:
    """In float32. Reduced precisions are measured, not asserted: `python -m bench.invariance`."""
    settings = Settings(_env_file=None, data_dir=shared_data_dir, api_keys=TEST_KEYS, dtype="float32")  # type: ignore[call-arg]
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with LifespanManager(app), httpx.AsyncClient(transport=transport, base_url="http://t", timeout=300) as http:
        await wait_ready(http)

        async def run(prompt: str, **extra: object) -> list[str]:
            body = {"prompt": prompt, "max_new_tokens": 24, **extra}
            response = await http.post("/infer", json=body, headers=auth())
            assert response.status_code == 200, response.text
            return [response.json()["result"]]

        alone = [await run(p) for p in PROMPTS]
        # Noise: sampled requests of other lengths share the batch, joining and leaving around the eight.
        noise = [
            run(f"Tell me about the number {n}.", do_sample=True, seed=n, max_new_tokens=8 + 5 * n) for n in range(4)
        ]
        together = await asyncio.gather(*(run(p) for p in PROMPTS), *noise)
    assert together[: len(PROMPTS)] == alone
