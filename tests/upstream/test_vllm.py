"""The gateway in front of a real vLLM (its CPU build, `make vllm`) serving the default model: run by
`make test-upstream`, not by the default suite (vLLM takes minutes to start on two cores and both of them while it
runs)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from bench.servers import vllm_command, vllm_env, vllm_python
from openai import OpenAI

from inference_api.documents.embedding import Embedder
from tests.conftest import USER_KEY, auth
from tests.test_server import free_port
from tests.upstream.conftest import fleet_registry, gateway, sse_events

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.upstream_vllm,
    pytest.mark.skipif(not os.environ.get("TEST_UPSTREAM_VLLM"), reason="real vLLM: `make test-upstream` runs these"),
]

HEADERS = auth(USER_KEY)
SERVED = "smollm2"
QUESTION = "What is the capital of France? Answer in one word."


@pytest.fixture(scope="module")
def vllm(tmp_path_factory: pytest.TempPathFactory, default_model_dir: Path) -> Iterator[str]:
    """vLLM's OpenAI server on the prepared default model (context 4096); yields its /v1 URL."""
    assert vllm_python().exists(), "vLLM's venv is missing: `make vllm` (or VLLM_VENV=...)"
    port = free_port()
    command = [part.replace("{port}", str(port)) for part in vllm_command(default_model_dir, SERVED)]
    log_path = tmp_path_factory.mktemp("vllm") / "vllm.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env={**os.environ, **vllm_env()}, stdout=log, stderr=subprocess.STDOUT)
        root = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 900
            while True:
                assert process.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "vLLM never became healthy"
                try:
                    if httpx.get(f"{root}/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(1)
            yield f"{root}/v1"
        finally:
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()


def metric(vllm: str, name: str, having: str = "") -> float:
    """The sum of one of vLLM's own metrics (the samples whose labels contain `having`)."""
    text = httpx.get(f"{vllm.removesuffix('/v1')}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name) and having in line)


def test_gateway_over_vllm_answers_as_vllm_does(tmp_path: Path, vllm: str, embedder: Embedder) -> None:
    """BACKEND=openai, no local weights or tokenizer: the prompt is encoded by vLLM's /tokenize, so a greedy answer
    through the gateway is vLLM's own answer, word for word, with the same token counts."""
    direct = httpx.post(
        f"{vllm}/chat/completions",
        json={"model": SERVED, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 16, "temperature": 0},
        timeout=120,
    ).json()
    with gateway(tmp_path, None, embedder, backend="openai", upstream_url=vllm, upstream_model=SERVED) as url:
        answer = httpx.post(
            f"{url}/infer", json={"prompt": QUESTION, "max_new_tokens": 16}, headers=HEADERS, timeout=120
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["result"] == direct["choices"][0]["message"]["content"]
        assert "Paris" in body["result"]
        assert body["metadata"]["prompt_tokens"] == direct["usage"]["prompt_tokens"]
        assert body["metadata"]["tokens_generated"] == direct["usage"]["completion_tokens"]

        with httpx.stream(
            "POST",
            f"{url}/infer",
            json={"prompt": QUESTION, "max_new_tokens": 16, "stream": True},
            headers=HEADERS,
            timeout=120,
        ) as response:
            events = list(sse_events(response))
        assert "".join(d["delta"] for _, d in events if "delta" in d) == body["result"]

        session = httpx.post(f"{url}/chat/start", json={"system_prompt": "Answer briefly."}, headers=HEADERS).json()
        for text in ("My name is Ada.", "What is my name?"):
            reply = httpx.post(
                f"{url}/chat/{session['sessionId']}/messages",
                json={"message": text, "max_new_tokens": 24},
                headers=HEADERS,
                timeout=120,
            )
            assert reply.status_code == 200, reply.text

        client = OpenAI(base_url=f"{url}/v1", api_key=USER_KEY, max_retries=0, timeout=120)
        chunks = list(
            client.chat.completions.create(
                model="fleet",
                messages=[{"role": "user", "content": QUESTION}],
                max_tokens=16,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == direct["choices"][0]["message"]["content"]
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == direct["usage"]["completion_tokens"]
        metrics = httpx.get(f"{url}/prometheus", headers=HEADERS).text
        assert 'time_to_first_token_seconds_count{model="fleet",version="base"}' in metrics


def test_a_tokenizer_folder_counts_as_vllm_does_and_vllms_400_is_ours(
    tmp_path: Path, vllm: str, default_model_dir: Path, embedder: Embedder
) -> None:
    registry = fleet_registry(tmp_path, [vllm], default_model_dir, model=SERVED, key_env=None)
    # The gateway lets 6000 tokens through (the folder's config says 8192); vLLM was started with 4096.
    with gateway(tmp_path, registry, embedder, max_input_tokens=6000) as url:
        answer = httpx.post(
            f"{url}/infer", json={"prompt": QUESTION, "max_new_tokens": 4}, headers=HEADERS, timeout=120
        )
        assert answer.status_code == 200, answer.text
        counted = httpx.post(
            f"{vllm.removesuffix('/v1')}/tokenize",
            json={"model": SERVED, "messages": [{"role": "user", "content": QUESTION}], "add_generation_prompt": True},
        ).json()
        assert answer.json()["metadata"]["prompt_tokens"] == counted["count"]

        too_long = httpx.post(
            f"{url}/infer", json={"prompt": "hello " * 4500, "max_new_tokens": 4}, headers=HEADERS, timeout=120
        )
        assert too_long.status_code == 400, too_long.text
        assert too_long.json()["error"]["code"] == "TOKEN_LIMIT_EXCEEDED"


def test_structured_outputs_reach_vllm(tmp_path: Path, vllm: str, embedder: Embedder) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}, "country": {"type": "string", "maxLength": 20}},
        "required": ["city", "country"],
    }
    with gateway(tmp_path, None, embedder, backend="openai", upstream_url=vllm, upstream_model=SERVED) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key=USER_KEY, max_retries=0, timeout=120)
        answer = client.chat.completions.create(
            model="fleet",
            messages=[{"role": "user", "content": "Name a city and its country as JSON."}],
            max_tokens=60,
            temperature=0,
            response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema}},
        )
        value = json.loads(answer.choices[0].message.content or "")
        assert set(value) == {"city", "country"}


def test_a_client_that_leaves_aborts_the_generation_in_vllm(tmp_path: Path, vllm: str, embedder: Embedder) -> None:
    tokens = "vllm:generation_tokens_total"
    with gateway(tmp_path, None, embedder, backend="openai", upstream_url=vllm, upstream_model=SERVED) as url:
        with httpx.stream(
            "POST",
            f"{url}/infer",
            json={"prompt": "Write a very long story about a dragon.", "max_new_tokens": 500, "stream": True},
            headers=HEADERS,
            timeout=120,
        ) as response:
            deltas = 0
            for _name, data in sse_events(response):
                if "delta" in data:
                    deltas += 1
                    if deltas == 1:
                        first = metric(vllm, tokens)
                    if deltas == 20:
                        break  # the client leaves
            assert metric(vllm, tokens) > first  # vLLM's counter moves while it generates
        time.sleep(1.5)
        left = metric(vllm, tokens)
        time.sleep(2.5)
        # 500 tokens would take vLLM tens of seconds here: still counting would mean it went on generating.
        assert metric(vllm, tokens) == left, "vLLM went on generating after the client left"
