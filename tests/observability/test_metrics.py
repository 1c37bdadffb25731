"""The engine's and the model cache's figures, read from the export after real requests on the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from inference_api.errors import ErrorCode
from inference_api.observability.metrics import ENGINE_FAILURES, REJECT_REASONS, Metrics
from tests.conftest import auth
from tests.observability.conftest import Running, Scrape, scrape

TINY = {"model": "tiny", "version": "base"}


async def test_generated_tokens_are_counted_exactly(running: Running) -> None:
    client = running.client
    before = await scrape(client)
    body = {"prompt": "one two three four five six", "max_new_tokens": 10, "raw": True}
    response = await client.post("/infer", json=body, headers=auth())
    assert response.status_code == 200, response.text
    meta = response.json()["metadata"]
    tokens = meta["tokens_generated"]
    assert 0 < tokens <= 10
    after = await scrape(client)

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert moved("tokens_generated_total", **TINY) == tokens
    assert moved("prompt_tokens_total", **TINY) == meta["prompt_tokens"]
    assert moved("successful_inferences_total", **TINY, domain="infer") == 1
    assert moved("token_generation_time_seconds_count", **TINY) == 1
    assert moved("request_queue_time_seconds_count", **TINY) == 1
    assert moved("time_to_first_token_seconds_count", **TINY) == 1
    assert moved("inter_token_latency_seconds_count", **TINY) == tokens - 1
    assert moved("api_requests_total", endpoint="/infer", status="200", **TINY) == 1
    assert moved("api_response_time_seconds_count", endpoint="/infer", **TINY) == 1
    assert moved("model_cache_hits_total", **TINY) >= 1
    # Nothing is waiting or generating once the answer is back.
    assert after.value("queue_depth") == 0 and after.value("batch_size") == 0
    assert after.value("queue_capacity") == running.services.settings.max_queue


async def test_chat_generations_count_under_their_domain(running: Running) -> None:
    client = running.client
    before = await scrape(client)
    session = (await client.post("/chat/start", json={}, headers=auth())).json()["sessionId"]
    response = await client.post(
        f"/chat/{session}/messages", json={"message": "Hi", "max_new_tokens": 4}, headers=auth()
    )
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    after = await scrape(client)
    assert (
        after.value("successful_inferences_total", **TINY, domain="chat")
        - before.value("successful_inferences_total", **TINY, domain="chat")
        == 1
    )
    assert (
        after.value("tokens_generated_total", **TINY) - before.value("tokens_generated_total", **TINY)
        == usage["tokens_generated"]
    )
    assert after.value("active_sessions") == 1


async def test_series_exist_before_the_first_event(running: Running) -> None:
    found = await scrape(running.client)
    for reason in REJECT_REASONS:
        assert {"reason": reason} in found.labels("requests_rejected_total")
    for reason in ("disconnect", "timeout"):
        assert {"reason": reason} in found.labels("requests_cancelled_total")
    assert {"code": "OVERLOADED"} in found.labels("error_responses_total")
    for code in ENGINE_FAILURES:
        assert {**TINY, "error_type": code.value} in found.labels("failed_inferences_total")
    assert {**TINY} in found.labels("tokens_generated_total")
    # The default model was loaded at start: one miss, its load time and its weights.
    assert found.value("model_cache_misses_total", **TINY) == 1
    assert found.value("model_load_time_seconds_count", **TINY) == 1
    assert found.value("model_memory_usage_bytes", **TINY) > 0
    assert found.value("device_memory_total_bytes", device="cpu") > found.value("device_memory_allocated_bytes") > 0


async def test_loading_and_evicting_an_adapter(running: Running) -> None:
    client = running.client
    alpha = {"model": "tiny", "version": "alpha"}
    load = await client.post(
        "/models/tiny/load", json={"version": "alpha"}, headers=auth("sk-test-admin-0123456789abcdef")
    )
    assert load.status_code == 200, load.text
    loaded = await scrape(client)
    assert loaded.value("model_cache_misses_total", **alpha) == 1
    adapter = loaded.value("model_memory_usage_bytes", **alpha)
    assert 0 < adapter < loaded.value("model_memory_usage_bytes", **TINY)
    missing = await client.post(
        "/models/tiny/load", json={"version": "nope"}, headers=auth("sk-test-admin-0123456789abcdef")
    )
    assert missing.status_code == 404
    # Loading another base fills CACHE_SIZE=2 and evicts the adapter (the default model is pinned).
    other = await client.post("/models/tiny-copy/load", headers=auth("sk-test-admin-0123456789abcdef"))
    assert other.status_code == 200, other.text
    evicted = await scrape(client)
    assert evicted.value("model_memory_usage_bytes", **alpha) == 0
    assert evicted.value("model_memory_usage_bytes", model="tiny-copy", version="base") > 0


async def test_a_full_queue_is_counted_as_rejected(running: Running) -> None:
    client = running.client
    engine = running.services.engine
    engine.queue.maxsize = 0  # every admission now finds the queue full
    response = await client.post("/infer", json={"prompt": "Hi", "max_new_tokens": 2}, headers=auth())
    assert response.status_code == 503 and response.json()["error"]["code"] == "OVERLOADED"
    found = await scrape(client)
    assert found.value("requests_rejected_total", reason="queue_full") == 1
    # The request named its model before it was refused, so the HTTP series carries it.
    assert found.value("api_requests_total", endpoint="/infer", status="503", **TINY) == 1


def test_rejections_for_rate_limits_and_quotas_have_plain_methods() -> None:
    metrics = Metrics()
    metrics.rate_limited("key:alice")
    metrics.rate_limited("addr:10.0.0.7")
    metrics.quota_exceeded("alice")
    metrics.quota_exceeded("alice")
    metrics.key_charged("alice", 12)
    found = Scrape(metrics.exposition().decode())
    assert found.value("requests_rejected_total", reason="rate_limited") == 2
    assert found.value("requests_rejected_total", reason="quota") == 2
    assert found.value("key_requests_rejected_total", key="alice", reason="rate_limited") == 1
    assert found.value("key_requests_rejected_total", key="anonymous", reason="rate_limited") == 1
    assert found.value("key_requests_rejected_total", key="alice", reason="quota") == 2
    assert found.value("key_tokens_generated_total", key="alice") == 12


_WRITER = textwrap.dedent(
    """
    import sys
    from inference_api.errors import ErrorCode
    from inference_api.observability.metrics import Metrics

    tokens, depth, leave = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "leave"
    metrics = Metrics(default_model=("tiny", "base"), queue_capacity=4)
    metrics.generation_completed("tiny", "base", "infer", 3, tokens, 0.5)
    metrics.queued(depth)
    metrics.error_response(ErrorCode.UNAUTHORIZED)
    if leave:
        metrics.close()
    """
)
_READER = textwrap.dedent(
    """
    import json
    from inference_api.observability.metrics import Metrics

    metrics = Metrics()
    print(json.dumps({"text": metrics.exposition().decode(), "errors": metrics.error_counts()}))
    """
)


def test_multiprocess_export_merges_every_process(tmp_path: Path) -> None:
    folder = tmp_path / "prometheus"
    folder.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}

    def python(code: str, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    python(_WRITER, "7", "3", "stay")  # a worker still serving (never marked dead)
    python(_WRITER, "5", "2", "leave")  # a worker that exited: its live gauges leave the sum
    exported = json.loads(python(_READER))
    found = Scrape(exported["text"])
    assert found.value("tokens_generated_total", model="tiny", version="base") == 12
    assert found.value("prompt_tokens_total", model="tiny", version="base") == 6
    assert found.value("successful_inferences_total", model="tiny", version="base", domain="infer") == 2
    assert found.value("token_generation_time_seconds_count", model="tiny", version="base") == 2
    assert found.value("error_responses_total", code="UNAUTHORIZED") == 2
    assert found.value("queue_depth") == 3
    assert found.value("queue_capacity") == 4
    assert exported["errors"][ErrorCode.UNAUTHORIZED.value] == 2
