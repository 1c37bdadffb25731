"""The engine under load: joins between steps, backpressure, cancellation, deadlines, faults.

Streaming timing and disconnects need a real socket (httpx's ASGI transport buffers whole
responses), so those tests run uvicorn in-process and look at the engine's state directly.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import uvicorn
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from torch.overrides import TorchFunctionMode

from inference_api.app import create_app
from inference_api.engine.batch import DecodeBatch
from inference_api.engine.service import Engine
from inference_api.engine.types import GenerationRequest, SamplingParams
from inference_api.engine.worker import DeviceWorker
from inference_api.settings import Settings
from tests.conftest import auth, make_settings, wait_ready

LONG = 150  # tokens: long enough to outlast everything else a test does, with slowed steps


@pytest.fixture
def slow_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each decode step takes at least 15 ms, so a 150-token request runs for seconds on the tiny model."""
    original = DecodeBatch.step

    def step(self: DecodeBatch) -> list[str]:
        time.sleep(0.015)
        return original(self)

    monkeypatch.setattr(DecodeBatch, "step", step)


def engine_of(app: FastAPI) -> Engine:
    engine: Engine = app.state.services.engine
    return engine


def worker_of(app: FastAPI) -> DeviceWorker:
    return engine_of(app).workers[0]


async def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@dataclass
class Live:
    url: str
    app: FastAPI


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def serve_live(settings: Settings) -> AsyncIterator[Live]:
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve())
    url = f"http://127.0.0.1:{port}"
    try:
        await until(lambda: server.started, 60)
        async with httpx.AsyncClient(base_url=url) as http:
            await wait_ready(http)
        yield Live(url, app)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


@pytest.fixture
async def live(tmp_path: Path, registry_file: Path) -> AsyncIterator[Live]:
    async for server in serve_live(make_settings(tmp_path / "data", registry_file, max_batch_size=16)):
        yield server


@pytest.fixture
async def live_single(tmp_path: Path, registry_file: Path) -> AsyncIterator[Live]:
    """One sequence at a time, so a second request can only run once the first leaves the batch."""
    async for server in serve_live(make_settings(tmp_path / "data", registry_file, max_batch_size=1)):
        yield server


async def stream_events(http: httpx.AsyncClient, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    async with http.stream("POST", "/infer", json={**body, "stream": True}, headers=auth()) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                yield json.loads(line[6:])


@pytest.mark.usefixtures("slow_steps")
async def test_newcomer_gets_its_first_token_while_eight_long_requests_run(live: Live) -> None:
    started = asyncio.Event()
    first_tokens = 0
    finished_at: list[float] = []

    async def long_request(http: httpx.AsyncClient, n: int) -> None:
        nonlocal first_tokens
        seen = False
        async for event in stream_events(http, {"prompt": f"story {n}", "max_new_tokens": LONG, "raw": True}):
            if "delta" in event and not seen:
                seen = True
                first_tokens += 1
                if first_tokens == 8:
                    started.set()
            if "metadata" in event:
                finished_at.append(time.monotonic())

    async with httpx.AsyncClient(base_url=live.url, timeout=120) as http:
        longs = [asyncio.create_task(long_request(http, n)) for n in range(8)]
        await asyncio.wait_for(started.wait(), 60)
        async for event in stream_events(http, {"prompt": "newcomer", "max_new_tokens": 2, "raw": True}):
            if "delta" in event or "metadata" in event:
                newcomer_first = time.monotonic()
                break
        running_then = len(worker_of(live.app).running())
        await asyncio.gather(*longs)
    assert not finished_at or newcomer_first < min(finished_at)
    assert running_then >= 8  # the eight were still generating when the newcomer's token came
    assert len(finished_at) == 8


@pytest.mark.usefixtures("slow_steps")
async def test_full_queue_answers_503_at_once_and_every_accepted_request_completes(
    tmp_path: Path, registry_file: Path
) -> None:
    settings = make_settings(tmp_path / "data", registry_file, max_batch_size=1, max_queue=2)
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with LifespanManager(app), httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as http:
        await wait_ready(http)
        body = {"prompt": "hello", "max_new_tokens": 20, "raw": True}
        responses = await asyncio.gather(*(http.post("/infer", json=body, headers=auth()) for _ in range(8)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {200, 503}, statuses
    refused = [r for r in responses if r.status_code == 503]
    for response in refused:
        assert response.json()["error"]["code"] == "OVERLOADED"
        assert int(response.headers["retry-after"]) >= 1
    accepted = [r for r in responses if r.status_code == 200]
    assert len(accepted) >= 3  # one generating and MAX_QUEUE=2 waiting, at the least
    assert all(r.json()["metadata"]["tokens_generated"] > 0 for r in accepted)


@pytest.mark.usefixtures("slow_steps")
async def test_disconnect_mid_stream_frees_the_slot_for_the_next_request(live_single: Live) -> None:
    worker = worker_of(live_single.app)
    async with httpx.AsyncClient(base_url=live_single.url, timeout=60) as http:
        async for event in stream_events(http, {"prompt": "a long story", "max_new_tokens": LONG, "raw": True}):
            if "delta" in event:
                break  # leaving the stream closes the connection mid-generation
    await until(lambda: not worker.running(), 5)
    assert worker.stats.cancelled == 1
    async with httpx.AsyncClient(base_url=live_single.url, timeout=60) as http:
        started = time.monotonic()
        body = {"prompt": "next", "max_new_tokens": 5, "raw": True}
        response = await http.post("/infer", json=body, headers=auth())
    assert response.status_code == 200
    assert time.monotonic() - started < LONG * 0.015  # it did not wait for the abandoned one to finish


@pytest.mark.usefixtures("slow_steps")
async def test_non_streaming_client_that_gives_up_is_dropped(live_single: Live) -> None:
    worker = worker_of(live_single.app)
    async with httpx.AsyncClient(base_url=live_single.url, timeout=0.3) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/infer", json={"prompt": "x", "max_new_tokens": LONG, "raw": True}, headers=auth())
    await until(lambda: not worker.running(), 5)
    assert worker.stats.cancelled == 1


@pytest.mark.usefixtures("slow_steps")
async def test_deadline_gives_504_and_the_work_stops(tmp_path: Path, registry_file: Path) -> None:
    # Slowed steps make a 250-token request outlast the 3 s deadline for sure (250 steps of 15 ms or more), and
    # 3 s leaves a loaded machine ample time to start the first (with 0.4 s, both were sometimes still queued).
    # The second waits behind it; whether its own deadline passes in the queue or in the few steps it gets once
    # the first is gone depends on how far apart a loaded machine took the two in, so both messages are allowed.
    settings = make_settings(tmp_path / "data", registry_file, request_timeout=3.0, max_batch_size=1)
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with LifespanManager(app), httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as http:
        await wait_ready(http)
        body = {"prompt": "x", "max_new_tokens": 250, "raw": True}  # most of the tiny model's 256-token context
        running, queued = await asyncio.gather(
            http.post("/infer", json=body, headers=auth()), http.post("/infer", json=body, headers=auth())
        )
        worker = worker_of(app)
        assert not worker.running()
        assert worker.stats.served == 1  # the warm-up alone: neither request completed
        assert worker.stats.failed == 2
    for response in (running, queued):
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "TIMEOUT"
    messages = [running.json()["error"]["message"], queued.json()["error"]["message"]]
    assert any(m.endswith("during generation") for m in messages)
    assert all(m.endswith(("during generation", "while it was queued")) for m in messages)


async def _start_and_wait_running(http: httpx.AsyncClient, app: FastAPI, body: dict[str, Any]) -> asyncio.Task[Any]:
    task = asyncio.create_task(http.post("/infer", json=body, headers=auth()))
    await until(lambda: worker_of(app).batch_size == 1)
    return task


@pytest.mark.usefixtures("slow_steps")
async def test_out_of_memory_in_a_prefill_fails_only_that_request(
    tmp_path: Path, registry_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = DecodeBatch.prefill

    def prefill(self: DecodeBatch, sequences: list[Any]) -> list[str]:
        if any(s.params.max_new_tokens == 77 for s in sequences):
            raise torch.OutOfMemoryError("injected")
        return original(self, sequences)

    monkeypatch.setattr(DecodeBatch, "prefill", prefill)
    app = create_app(make_settings(tmp_path / "data", registry_file))
    transport = httpx.ASGITransport(app=app)
    async with LifespanManager(app), httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as http:
        await wait_ready(http)
        running = await _start_and_wait_running(http, app, {"prompt": "a", "max_new_tokens": 40, "raw": True})
        doomed = await http.post("/infer", json={"prompt": "b", "max_new_tokens": 77, "raw": True}, headers=auth())
        survivor = await running
        after = await http.post("/infer", json={"prompt": "c", "max_new_tokens": 5, "raw": True}, headers=auth())
    assert doomed.status_code == 503
    assert doomed.json()["error"]["code"] == "OUT_OF_MEMORY"
    assert survivor.status_code == 200 and survivor.json()["metadata"]["tokens_generated"] == 40
    assert after.status_code == 200


async def test_out_of_memory_in_a_decode_step_fails_that_batch_and_the_server_goes_on(
    tmp_path: Path, registry_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = DecodeBatch.step
    calls = 0

    def step(self: DecodeBatch) -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise torch.OutOfMemoryError("injected")
        return original(self)

    monkeypatch.setattr(DecodeBatch, "step", step)
    app = create_app(make_settings(tmp_path / "data", registry_file), warm_up=True)
    transport = httpx.ASGITransport(app=app)
    async with LifespanManager(app), httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as http:
        await wait_ready(http)  # the warm-up used step 1
        calls = 0
        body = {"prompt": "x", "max_new_tokens": 30, "raw": True}
        first = await http.post("/infer", json=body, headers=auth())
        second = await http.post("/infer", json=body, headers=auth())
    assert first.status_code == 503 and first.json()["error"]["code"] == "OUT_OF_MEMORY"
    assert second.status_code == 200


async def test_a_worker_whose_loop_breaks_is_restarted_and_its_request_answered(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = DeviceWorker._deliver
    broken = {"left": 1}

    def deliver(self: DeviceWorker, *args: Any) -> None:
        if broken["left"]:
            broken["left"] -= 1
            raise RuntimeError("bug in the loop")
        original(self, *args)

    monkeypatch.setattr(DeviceWorker, "_deliver", deliver)
    body = {"prompt": "x", "max_new_tokens": 5, "raw": True}
    failed = await client.post("/infer", json=body, headers=auth())
    assert failed.status_code == 500
    assert failed.json()["error"]["code"] == "INTERNAL_ERROR"
    assert "bug" not in failed.text
    ok = await client.post("/infer", json=body, headers=auth())
    assert ok.status_code == 200
    status = (await client.get("/status", headers=auth())).json()
    assert status["workers"][0]["restarts"] == 1


async def test_requests_for_two_models_are_all_served(client: httpx.AsyncClient) -> None:
    bodies = [
        {"prompt": "x", "max_new_tokens": 8, "raw": True, "base_model": base, "adapter_version": version}
        for base, version in [("tiny", None), ("tiny", "alpha"), ("tiny-copy", None), ("tiny", None)] * 2
    ]
    responses = await asyncio.gather(*(client.post("/infer", json=b, headers=auth()) for b in bodies))
    assert [r.status_code for r in responses] == [200] * len(bodies)
    versions = [(r.json()["metadata"]["model"], r.json()["metadata"]["version"]) for r in responses]
    assert versions == [(b["base_model"], b["adapter_version"] or "base") for b in bodies]


async def test_batched_output_equals_solo_output_on_the_tiny_model(client: httpx.AsyncClient) -> None:
    prompts = [f"prompt number {n} " * (n + 1) for n in range(6)]

    async def run(prompt: str) -> str:
        body = {"prompt": prompt, "max_new_tokens": 16, "raw": True}
        response = await client.post("/infer", json=body, headers=auth())
        assert response.status_code == 200
        return str(response.json()["result"])

    alone = [await run(p) for p in prompts]
    together = await asyncio.gather(*(run(p) for p in prompts))
    assert list(together) == alone


class TensorOps(TorchFunctionMode):
    """Records the tensor functions called on the thread that entered it (torch's mode stack is per thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.names.append(getattr(func, "__name__", repr(func)))
        return func(*args, **(kwargs or {}))


async def test_rows_leaving_at_different_steps_do_no_tensor_work_on_the_event_loop(client: httpx.AsyncClient) -> None:
    # Tensor work on the loop's thread would start a second OpenMP team, after which libgomp stops
    # spinning between the worker's parallel regions for the rest of the process (steps ~2x slower).
    bodies: list[dict[str, Any]] = [{"prompt": f"row {n}", "max_new_tokens": 2 + 3 * n, "raw": True} for n in range(5)]
    bodies[1] |= {"do_sample": True, "temperature": 0.8, "top_k": 20, "seed": 7}
    with TensorOps() as ops:
        responses = await asyncio.gather(*(client.post("/infer", json=b, headers=auth()) for b in bodies))
    assert [r.json()["metadata"]["tokens_generated"] for r in responses] == [b["max_new_tokens"] for b in bodies]
    assert ops.names == []


async def test_requests_waiting_when_the_batch_is_empty_share_one_prefill(settings: Settings) -> None:
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=120, shutdown_timeout=30):
        engine, worker = engine_of(app), worker_of(app)
        await until(lambda: engine.ready, 60)
        ref = engine.registry.default
        before = worker.stats.prefills
        requests = [GenerationRequest(ref, [5, 6, 7 + n], SamplingParams(max_new_tokens=4)) for n in range(4)]
        for request in requests:  # all queued before the worker, waiting on the queue, gets to run
            engine.admit(request)
        completions = [await request.result() for request in requests]
        assert [c.tokens_generated for c in completions] == [4] * 4
        assert worker.stats.prefills - before == 1


async def test_chat_prompts_reuse_their_system_block(client: httpx.AsyncClient) -> None:
    for prompt in ("What is the capital of France?", "Name a colour"):
        response = await client.post("/infer", json={"prompt": prompt, "max_new_tokens": 2}, headers=auth())
        assert response.status_code == 200
    raw = await client.post("/infer", json={"prompt": "raw text", "max_new_tokens": 2, "raw": True}, headers=auth())
    assert raw.status_code == 200
    status = (await client.get("/status", headers=auth())).json()
    shared = status["workers"][0]["shared_prefixes"]["tiny"]
    assert (shared["entries"], shared["misses"]) == (1, 1) and shared["hits"] >= 1


async def test_rows_that_end_together_are_awaited_for_one_prefill_and_a_lone_one_is_not(
    tmp_path: Path, registry_file: Path
) -> None:
    app = create_app(make_settings(tmp_path / "data", registry_file, batch_join_wait=0.5))
    async with LifespanManager(app, startup_timeout=120, shutdown_timeout=30):
        engine, worker = engine_of(app), worker_of(app)
        await until(lambda: engine.ready, 60)
        ref = engine.registry.default

        def request(n: int) -> GenerationRequest:
            return GenerationRequest(ref, [5, 6, 7 + n], SamplingParams(max_new_tokens=4))

        first_wave = [request(n) for n in range(4)]
        for r in first_wave:
            engine.admit(r)
        for r in first_wave:
            await r.result()
        before = worker.stats.prefills
        # Four clients come back one after another, as they would over a network.
        second_wave = []
        for n in range(4):
            second_wave.append(request(n))
            engine.admit(second_wave[-1])
            await asyncio.sleep(0.02)
        for r in second_wave:
            await r.result()
        assert worker.stats.prefills - before == 1
        # A beam search after them runs alone, so it does not wait for company either.
        beam = GenerationRequest(ref, [5, 6, 7], SamplingParams(max_new_tokens=2, num_beams=2))
        engine.admit(beam)
        await beam.result()
        assert beam.started_at is not None and beam.started_at - beam.enqueued_at < 0.25
        # After a request that ended alone, the next one starts at once.
        for n in (8, 9):
            lone = request(n)
            engine.admit(lone)
            await lone.result()
        assert lone.started_at is not None and lone.started_at - lone.enqueued_at < 0.25
