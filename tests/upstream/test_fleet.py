"""The gateway in front of two upstream replicas (our own server in processes of its own, a real OpenAI-compatible
server): every front-end through them, load spread, session stickiness, limits checked before forwarding, upstream
refusals in our envelope, a client that leaves closing the upstream request, a replica killed mid-stream and back."""

from __future__ import annotations

import concurrent.futures
import json
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from inference_api.documents.embedding import Embedder
from tests.conftest import ADMIN_KEY, USER_KEY, auth
from tests.upstream.conftest import Replica, fleet_registry, gateway, sse_events, upstream_status

HEADERS = auth(USER_KEY)


def served(url: str) -> dict[str, int]:
    return {u: r["served"] for u, r in upstream_status(url, HEADERS).items()}


def wait_for(check: object, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("the condition never held")


@pytest.fixture(scope="module")
def unaware(
    tmp_path_factory: pytest.TempPathFactory, replicas: list[Replica], tiny_model_dir: Path, embedder: Embedder
) -> object:
    """A second gateway that checks its replicas only at start: it learns of a dead one from its requests."""
    folder = tmp_path_factory.mktemp("unaware")
    registry = fleet_registry(folder, [r.url for r in replicas], tiny_model_dir)
    with gateway(folder, registry, embedder, upstream_health_interval=3600.0) as url:
        yield url


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, replicas: list[Replica], tiny_model_dir: Path, embedder: Embedder
) -> object:
    folder = tmp_path_factory.mktemp("gateway")
    registry = fleet_registry(folder, [r.url for r in replicas], tiny_model_dir)
    with gateway(folder, registry, embedder, max_input_tokens=2000) as url:
        yield url


def test_every_front_end_goes_through_the_fleet(fleet: str, replicas: list[Replica]) -> None:
    before = sum(served(fleet).values())
    request_id = "upstream-test-0001"
    infer = httpx.post(
        f"{fleet}/infer",
        json={"prompt": "Hello there", "max_new_tokens": 12},
        headers={**HEADERS, "X-Request-ID": request_id},
        timeout=60,
    )
    assert infer.status_code == 200, infer.text
    metadata = infer.json()["metadata"]
    assert metadata["model"] == "fleet" and 0 < metadata["tokens_generated"] <= 12
    assert metadata["prompt_tokens"] > 3  # the chat template around "Hello there", encoded here

    with httpx.stream(
        "POST", f"{fleet}/infer", json={"prompt": "Count", "max_new_tokens": 10, "stream": True}, headers=HEADERS
    ) as response:
        events = list(sse_events(response))
    deltas = "".join(data["delta"] for name, data in events if "delta" in data)
    final = events[-1][1]
    assert final["result"] == deltas and final["metadata"]["tokens_generated"] <= 10

    session = httpx.post(f"{fleet}/chat/start", json={"system_prompt": "Be brief."}, headers=HEADERS).json()
    for text in ("First question", "Second question"):
        reply = httpx.post(
            f"{fleet}/chat/{session['sessionId']}/messages",
            json={"message": text, "max_new_tokens": 8},
            headers=HEADERS,
            timeout=60,
        )
        assert reply.status_code == 200, reply.text

    # The official SDK, streaming, with usage: what the upstream generated is what is reported.
    client = OpenAI(base_url=f"{fleet}/v1", api_key=USER_KEY, max_retries=0, timeout=60)
    stream = client.chat.completions.create(
        model="fleet",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=9,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    usage = chunks[-1].usage
    assert usage is not None and 0 < usage.completion_tokens <= 9 and usage.prompt_tokens > 0
    completion = client.completions.create(model="fleet", prompt="Once upon", max_tokens=5)
    assert completion.usage is not None and completion.usage.completion_tokens <= 5

    after = served(fleet)
    assert sum(after.values()) - before == 6  # 2 /infer, 2 chat turns, 2 SDK calls
    metrics = httpx.get(f"{fleet}/prometheus", headers=HEADERS).text
    assert 'time_to_first_token_seconds_count{model="fleet",version="base"}' in metrics
    assert 'upstream_requests_total{model="fleet",outcome="ok",replica=' in metrics
    assert 'upstream_replica_healthy{model="fleet"' in metrics
    assert 'tokens_generated_total{model="fleet",version="base"}' in metrics
    # The request id reached the replica (its access log names it).
    assert any(request_id in r.output() for r in replicas)


def test_load_spreads_and_a_session_sticks(fleet: str) -> None:
    before = served(fleet)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda i: httpx.post(
                    f"{fleet}/infer", json={"prompt": f"Item {i}", "max_new_tokens": 24}, headers=HEADERS, timeout=60
                ),
                range(8),
            )
        )
    assert all(a.status_code == 200 for a in answers)
    spread = {u: n - before[u] for u, n in served(fleet).items()}
    assert all(n > 0 for n in spread.values()), spread

    session = httpx.post(f"{fleet}/chat/start", json={}, headers=HEADERS).json()["sessionId"]
    before = served(fleet)
    for turn in range(4):
        reply = httpx.post(
            f"{fleet}/chat/{session}/messages", json={"message": f"turn {turn}", "max_new_tokens": 4}, headers=HEADERS
        )
        assert reply.status_code == 200, reply.text
    turns = {u: n - before[u] for u, n in served(fleet).items()}
    assert sorted(turns.values()) == [0, 4], turns  # every turn on the same replica


def test_structured_outputs_are_passed_to_the_upstream(fleet: str) -> None:
    """The tiny model writes noise; only the replica's grammar can make it valid JSON of the schema."""
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    client = OpenAI(base_url=f"{fleet}/v1", api_key=USER_KEY, max_retries=0, timeout=60)
    for _ in range(2):
        answer = client.chat.completions.create(
            model="fleet",
            messages=[{"role": "user", "content": "A number, as JSON"}],
            max_tokens=24,
            temperature=1.0,
            response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
        )
        value = json.loads(answer.choices[0].message.content or "")
        assert isinstance(value["n"], int)
    choice = httpx.post(
        f"{fleet}/v1/completions",
        json={"model": "fleet", "prompt": "Pick:", "max_tokens": 8, "structured_outputs": {"choice": ["yes", "no"]}},
        headers=HEADERS,
        timeout=60,
    )
    assert choice.status_code == 200, choice.text
    assert choice.json()["choices"][0]["text"] in ("yes", "no")


def test_limits_are_checked_before_forwarding_and_upstream_refusals_are_ours(fleet: str) -> None:
    before = served(fleet)
    # Past the model's context (256, from the tokenizer folder's config): refused here, nothing sent.
    long = httpx.post(
        f"{fleet}/infer", json={"prompt": "word " * 400, "max_new_tokens": 8}, headers=HEADERS, timeout=60
    )
    assert long.status_code == 400 and long.json()["error"]["code"] == "TOKEN_LIMIT_EXCEEDED"
    assert served(fleet) == before
    # Within what the gateway allows, past the replicas' MAX_INPUT_TOKENS (200): the upstream's 400, in our envelope.
    refused = httpx.post(
        f"{fleet}/infer", json={"prompt": "word " * 210, "max_new_tokens": 8}, headers=HEADERS, timeout=60
    )
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["code"] == "TOKEN_LIMIT_EXCEEDED" and "upstream" in error["message"]
    assert refused.headers["x-request-id"] == error["request_id"]
    # What an upstream model cannot do here yet is refused clearly, not sent.
    beams = httpx.post(f"{fleet}/infer", json={"prompt": "x", "max_new_tokens": 4, "num_beams": 2}, headers=HEADERS)
    assert beams.status_code == 422 and "num_beams" in beams.json()["error"]["message"]


def test_a_client_that_leaves_closes_the_upstream_request(fleet: str, replicas: list[Replica]) -> None:
    cancelled = sum(r.metric('requests_cancelled_total{reason="disconnect"}') for r in replicas)
    with httpx.stream(
        "POST",
        f"{fleet}/infer",
        json={"prompt": "Tell me everything", "max_new_tokens": 200, "stream": True},
        headers=HEADERS,
        timeout=60,
    ) as response:
        for _name, data in sse_events(response):
            if "delta" in data:
                break  # the client leaves after its first text
    wait_for(lambda: all(r["in_flight"] == 0 for r in upstream_status(fleet, HEADERS).values()))
    wait_for(lambda: sum(r.metric('requests_cancelled_total{reason="disconnect"}') for r in replicas) > cancelled)


def test_no_replica_reachable_is_503_with_retry_after(tmp_path: Path, tiny_model_dir: Path, embedder: Embedder) -> None:
    closed = [f"http://127.0.0.1:{port}/v1" for port in (9, 10)]  # nothing listens there
    registry = fleet_registry(tmp_path, closed, tiny_model_dir)
    with gateway(tmp_path, registry, embedder) as url:
        answer = httpx.post(f"{url}/infer", json={"prompt": "hi", "max_new_tokens": 4}, headers=HEADERS)
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "MODEL_NOT_READY"
        assert int(answer.headers["retry-after"]) > 0
        assert all(not r["healthy"] for r in upstream_status(url, HEADERS).values())


def test_backend_openai_counts_with_the_upstreams_tokenize(
    tmp_path: Path, replicas: list[Replica], embedder: Embedder
) -> None:
    """BACKEND=openai: no registry, no local weights, no tokenizer folder; the replicas' /tokenize encodes."""
    started = time.monotonic()
    with gateway(
        tmp_path,
        None,
        embedder,
        backend="openai",
        upstream_url=",".join(r.url for r in replicas),
        upstream_model="tiny",
        upstream_api_key=ADMIN_KEY,
    ) as url:
        assert time.monotonic() - started < 30
        answer = httpx.post(f"{url}/infer", json={"prompt": "Hello", "max_new_tokens": 6}, headers=HEADERS, timeout=60)
        assert answer.status_code == 200, answer.text
        # The same prompt tokenized by the replica itself gives the same count.
        direct = httpx.post(
            f"{replicas[0].root}/tokenize",
            json={"model": "tiny", "messages": [{"role": "user", "content": "Hello"}]},
            headers={"X-API-Key": ADMIN_KEY},
        ).json()
        assert answer.json()["metadata"]["prompt_tokens"] == direct["count"]
        session = httpx.post(f"{url}/chat/start", json={}, headers=HEADERS).json()["sessionId"]
        reply = httpx.post(
            f"{url}/chat/{session}/messages", json={"message": "Hi", "max_new_tokens": 4}, headers=HEADERS
        )
        assert reply.status_code == 200, reply.text
        models = httpx.get(f"{url}/models", headers=HEADERS).json()["models"]
        assert [m["base_model"] for m in models if m["loaded"]] == ["fleet"]


def test_a_replica_killed_mid_stream_then_back(fleet: str, unaware: str, replicas: list[Replica]) -> None:
    """Requests on the killed replica get a clear error event, new ones go to the other (a gateway that has not
    checked it since sends each request there at most once: the connect error is retried on the other, unseen by
    the client), and it is used again once it is back. (Last in the module: it kills a replica, and starts it
    again.)"""
    with httpx.stream(
        "POST",
        f"{fleet}/infer",
        json={"prompt": "A long story", "max_new_tokens": 200, "stream": True},
        headers=HEADERS,
        timeout=60,
    ) as response:
        events = sse_events(response)
        for _name, data in events:
            if "delta" in data:
                break
        busy = [u for u, r in upstream_status(fleet, HEADERS).items() if r["in_flight"] > 0]
        assert len(busy) == 1
        victim = next(r for r in replicas if r.url == busy[0])
        victim.kill()
        rest = list(events)
    name, data = rest[-1]
    assert name == "error" and data["error"]["code"] == "DEPENDENCY_UNAVAILABLE", rest[-3:]

    wait_for(lambda: not upstream_status(fleet, HEADERS)[victim.url]["healthy"])
    for i in range(4):
        answer = httpx.post(f"{fleet}/infer", json={"prompt": f"after {i}", "max_new_tokens": 4}, headers=HEADERS)
        assert answer.status_code == 200, answer.text

    assert upstream_status(unaware, HEADERS)[victim.url]["healthy"]  # as far as it knows
    for i in range(4):
        answer = httpx.post(f"{unaware}/infer", json={"prompt": f"r{i}", "max_new_tokens": 4}, headers=HEADERS)
        assert answer.status_code == 200, answer.text
    metrics = httpx.get(f"{unaware}/prometheus", headers=HEADERS).text
    assert f'upstream_requests_total{{model="fleet",outcome="retried",replica="{victim.url}"}} 1.0' in metrics
    assert not upstream_status(unaware, HEADERS)[victim.url]["healthy"]

    victim.start()
    victim.wait_ready()
    wait_for(lambda: upstream_status(fleet, HEADERS)[victim.url]["healthy"])
    before = served(fleet)[victim.url]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(
            pool.map(
                lambda i: httpx.post(
                    f"{fleet}/infer", json={"prompt": f"back {i}", "max_new_tokens": 16}, headers=HEADERS, timeout=60
                ),
                range(6),
            )
        )
    assert served(fleet)[victim.url] > before
