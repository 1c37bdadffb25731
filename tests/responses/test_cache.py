"""The response cache: deterministic requests answered again without generating, per key, invalidated."""

from __future__ import annotations

import re
from typing import Any

import httpx

from inference_api.documents.protocol import Source
from inference_api.engine.types import Completion, GenerationRequest, SamplingParams
from inference_api.generation.cache import ResponseCache
from inference_api.modeling.registry import ModelRef
from tests.conftest import ADMIN_KEY, USER_KEY, auth
from tests.documents.samples import sample
from tests.openai_api.conftest import sdk


def infer(server: str, key: str = USER_KEY, **body: Any) -> dict[str, Any]:
    payload = {"prompt": "Tell me about the sea.", "max_new_tokens": 8, **body}
    answer = httpx.post(f"{server}/infer", json=payload, headers=auth(key), timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def counter(server: str, name: str) -> float:
    text = httpx.get(f"{server}/prometheus", timeout=10).text
    return sum(float(v) for v in re.findall(rf'^{name}\{{model="tiny",version="base"\}} (\S+)$', text, re.M))


def test_a_repeated_greedy_request_is_answered_from_the_cache(server: str) -> None:
    hits = counter(server, "response_cache_hits_total")
    first = infer(server, prompt="Name a colour of the sky.")
    again = infer(server, prompt="Name a colour of the sky.")

    assert first["metadata"]["cached"] is False and again["metadata"]["cached"] is True
    assert again["result"].encode() == first["result"].encode()
    assert again["metadata"]["queue_time"] == 0.0
    assert again["metadata"]["generation_time"] < 0.001 < first["metadata"]["generation_time"]
    assert again["metadata"]["tokens_generated"] == first["metadata"]["tokens_generated"]
    assert counter(server, "response_cache_hits_total") == hits + 1

    # A stream of the same request replays the answer as deltas.
    with httpx.stream(
        "POST",
        f"{server}/infer",
        json={"prompt": "Name a colour of the sky.", "max_new_tokens": 8, "stream": True},
        headers=auth(),
        timeout=60,
    ) as stream:
        events = [line for line in stream.iter_lines() if line.startswith("data: ")]
    assert "".join(e for e in events[:-1] if '"delta"' in e)  # deltas came
    assert '"cached": true' in events[-1]


def test_responses_are_marked_and_streams_replay_as_deltas(server: str) -> None:
    client = sdk(server)
    ask = {"model": "tiny", "input": "Which season is the coldest?", "temperature": 0, "max_output_tokens": 8}
    streamed = list(client.responses.create(stream=True, **ask))  # type: ignore[call-overload]
    deltas = [e.delta for e in streamed if e.type == "response.output_text.delta"]
    assert streamed[-1].response.model_dump()["cached"] is False

    plain = client.responses.create(**ask)
    assert plain.model_dump()["cached"] is True and plain.output_text == "".join(deltas)
    replay = list(client.responses.create(stream=True, **ask))  # type: ignore[call-overload]
    assert [e.delta for e in replay if e.type == "response.output_text.delta"] == deltas
    assert replay[-1].response.model_dump()["cached"] is True
    assert [e.sequence_number for e in replay] == list(range(len(replay)))


def test_another_key_seed_or_sampling_misses(server: str) -> None:
    prompt = "Write one word about trees."
    infer(server, prompt=prompt)
    assert infer(server, prompt=prompt)["metadata"]["cached"] is True
    assert infer(server, key=ADMIN_KEY, prompt=prompt)["metadata"]["cached"] is False  # never across keys
    assert infer(server, prompt=prompt, max_new_tokens=7)["metadata"]["cached"] is False
    # The same prompt under a response format is another answer, and is kept as one.
    constrained = {"prompt": prompt, "response_format": {"type": "choice", "choices": ["oak", "elm"]}}
    assert infer(server, **constrained)["metadata"]["cached"] is False
    hit = infer(server, **constrained)
    assert hit["metadata"]["cached"] is True and hit["result"] in ("oak", "elm")

    sampled = {"prompt": prompt, "do_sample": True, "temperature": 1.0}
    seeded = infer(server, **sampled, seed=1)
    assert seeded["metadata"]["cached"] is False
    hit = infer(server, **sampled, seed=1)
    assert hit["metadata"]["cached"] is True and hit["result"] == seeded["result"]
    assert infer(server, **sampled, seed=2)["metadata"]["cached"] is False
    # Sampling without a seed is never cached.
    assert infer(server, **sampled)["metadata"]["cached"] is False
    assert infer(server, **sampled)["metadata"]["cached"] is False


def test_a_change_in_the_callers_documents_misses(server: str) -> None:
    question = {"prompt": "What is the access code of the Zanzibar vault?", "use_documents": True}
    name, data = sample("md")
    uploaded = httpx.post(f"{server}/upload", files={"file": (name, data)}, headers=auth(), timeout=120)
    assert uploaded.status_code == 200, uploaded.text
    first = infer(server, **question)
    assert first["sources"] and first["metadata"]["cached"] is False
    assert infer(server, **question)["metadata"]["cached"] is True

    # Another key's upload leaves this key's answers alone; this key's own upload drops them.
    other = httpx.post(f"{server}/upload", files={"file": ("b.txt", b"Apples are red.")}, headers=auth(ADMIN_KEY))
    assert other.status_code == 200
    assert infer(server, **question)["metadata"]["cached"] is True
    mine = httpx.post(f"{server}/upload", files={"file": ("c.txt", b"Pears are green.")}, headers=auth())
    assert mine.status_code == 200
    assert infer(server, **question)["metadata"]["cached"] is False
    assert infer(server, **question)["metadata"]["cached"] is True
    deleted = httpx.delete(f"{server}/documents/{mine.json()['document_id']}", headers=auth())
    assert deleted.status_code == 200
    assert infer(server, **question)["metadata"]["cached"] is False


def test_loading_a_model_drops_its_answers(server: str) -> None:
    infer(server, prompt="Loaded?")
    assert infer(server, prompt="Loaded?")["metadata"]["cached"] is True
    loaded = httpx.post(f"{server}/models/tiny/load", headers=auth(ADMIN_KEY), timeout=60)
    assert loaded.status_code == 200, loaded.text
    assert infer(server, prompt="Loaded?")["metadata"]["cached"] is False


def _request(owner: str, ids: list[int], **params: Any) -> GenerationRequest:
    return GenerationRequest(ModelRef("m"), ids, SamplingParams(max_new_tokens=4, **params), owner=owner)


def _done(text: str) -> Completion:
    return Completion(text, "stop", ModelRef("m"), 3, 2, 0.1, 0.2)


def test_the_cache_is_bounded_least_recently_used_first() -> None:
    cache = ResponseCache(max_bytes=2000)  # two entries of ~930 bytes
    keys = [cache.key(_request("alice", [i]), None) for i in range(3)]
    assert None not in keys
    k0, k1, k2 = keys
    assert k0 is not None and k1 is not None and k2 is not None
    cache.put(k0, ["x" * 200], _done("x" * 200))
    cache.put(k1, ["x" * 200], _done("x" * 200))
    assert cache.get(k0) is not None  # used: k1 is now the least recently used
    cache.put(k2, ["x" * 200], _done("x" * 200))
    assert cache.size_bytes <= 2000 and len(cache) == 2
    assert cache.get(k1) is None and cache.get(k0) is not None and cache.get(k2) is not None
    cache.put(k1, ["y" * 5000], _done("y" * 5000))  # bigger than the whole cache: not kept
    assert cache.get(k1) is None and len(cache) == 2

    assert cache.key(_request("alice", [1], do_sample=True), None) is None  # sampled without a seed
    assert cache.key(_request("alice", [1], do_sample=True, seed=3), None) is not None
    assert ResponseCache(0).key(_request("alice", [1]), None) is None  # off
    assert cache.key(_request("alice", [1], logprobs=0), None) is None  # its replay would lack the logprobs
    assert cache.forget_owner("bob") == 0 and cache.forget_owner("alice") == 2 and cache.size_bytes == 0


def test_keys_differ_by_owner_prompt_parameters_and_sources() -> None:
    cache = ResponseCache(max_bytes=10_000)
    base = cache.key(_request("alice", [1, 2]), None)
    assert base is not None and base == cache.key(_request("alice", [1, 2]), None)
    assert base != cache.key(_request("bob", [1, 2]), None)
    assert base != cache.key(_request("alice", [1, 3]), None)
    assert base != cache.key(_request("alice", [1, 2], stop=("x",)), None)
    source = Source(document_id="d", filename="f.txt", chunk_index=0, score=0.5, excerpt="e")
    grounded = cache.key(_request("alice", [1, 2]), [source])
    assert grounded is not None and grounded != base
    assert grounded != cache.key(_request("alice", [1, 2]), [source.model_copy(update={"chunk_index": 1})])
