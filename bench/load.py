"""Closed-loop load: N clients, each sending its next streamed request as soon as the previous one ends.

Two wire protocols are spoken: our `/infer` (Server-Sent Events with a final metadata event) and the
OpenAI-compatible `/v1/chat/completions` stream that every server exposes (ours, vLLM, `transformers serve`,
llama-cpp-python).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from bench.prompts import WARMUP_PROMPT

# Bodies of failed responses are read only this far: enough for an error envelope, never a runaway body.
_ERROR_BODY_LIMIT = 4096


@dataclass(frozen=True)
class RequestResult:
    ok: bool
    latency: float
    tokens: int = 0
    ttft: float | None = None
    # Where the token count came from: "metadata", "usage" or "chunks" (counted content deltas).
    token_source: str = ""
    error: str | None = None


@dataclass(frozen=True)
class LevelResult:
    concurrency: int
    requests: int
    wall_time: float
    results: tuple[RequestResult, ...]

    @property
    def ok(self) -> list[RequestResult]:
        return [r for r in self.results if r.ok]

    @property
    def errors(self) -> int:
        return sum(1 for r in self.results if not r.ok)

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.ok)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_time if self.wall_time > 0 else 0.0

    @property
    def requests_per_s(self) -> float:
        return len(self.ok) / self.wall_time if self.wall_time > 0 else 0.0

    @classmethod
    def combined(cls, blocks: Sequence[LevelResult]) -> LevelResult:
        """Blocks of one level measured at different times, as one level: their requests and their wall times summed."""
        return cls(
            concurrency=blocks[0].concurrency,
            requests=sum(block.requests for block in blocks),
            wall_time=sum(block.wall_time for block in blocks),
            results=tuple(result for block in blocks for result in block.results),
        )


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: str


async def iter_sse(response: httpx.Response) -> AsyncIterator[SseEvent]:
    """The events of a text/event-stream body, per the SSE framing rules that matter here."""
    event = "message"
    data: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield SseEvent(event, "\n".join(data))
            event, data = "message", []
            continue
        if line.startswith(":"):  # comment: llama-cpp-python's keep-alive pings
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    if data:
        yield SseEvent(event, "\n".join(data))


class Api(Protocol):
    """One wire protocol: how to ask for a streamed completion and how to read its answer."""

    async def send(self, client: httpx.AsyncClient, prompt: str, max_tokens: int) -> RequestResult: ...


async def _error_label(response: httpx.Response) -> str:
    body = b""
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) >= _ERROR_BODY_LIMIT:
            break
    code = ""
    try:
        payload = json.loads(body[:_ERROR_BODY_LIMIT])
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict):
            code = str(error.get("code") or error.get("message") or "")
        elif error is not None:
            code = str(error)
        elif "detail" in payload:
            code = str(payload["detail"])
    return f"HTTP {response.status_code} {code[:80]}".strip()


def _failure(started: float, exc: Exception) -> RequestResult:
    # Every failure of one request is counted, not raised: one bad answer must not end the level.
    label = type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        label = f"client timeout ({label})"
    return RequestResult(ok=False, latency=time.perf_counter() - started, error=label)


class OursApi:
    """POST /infer with stream=true: `{"delta"}` events, then `{"result", "metadata"}`, or `event: error`."""

    def __init__(self, api_key: str) -> None:
        self._headers = {"X-API-Key": api_key}

    async def send(self, client: httpx.AsyncClient, prompt: str, max_tokens: int) -> RequestResult:
        body = {"prompt": prompt, "max_new_tokens": max_tokens, "stream": True}
        started = time.perf_counter()
        ttft: float | None = None
        try:
            async with client.stream("POST", "/infer", json=body, headers=self._headers) as response:
                if response.status_code != 200:
                    return RequestResult(
                        ok=False, latency=time.perf_counter() - started, error=await _error_label(response)
                    )
                async for event in iter_sse(response):
                    payload = json.loads(event.data)
                    if event.event == "error" or "error" in payload:
                        error = payload.get("error")
                        code = error.get("code", "error") if isinstance(error, dict) else str(error)
                        return RequestResult(
                            ok=False, latency=time.perf_counter() - started, ttft=ttft, error=f"stream {code}"
                        )
                    if payload.get("delta"):
                        if ttft is None:
                            ttft = time.perf_counter() - started
                    elif "result" in payload:
                        tokens = int(payload["metadata"]["tokens_generated"])
                        return RequestResult(
                            ok=True,
                            latency=time.perf_counter() - started,
                            tokens=tokens,
                            ttft=ttft,
                            token_source="metadata",
                        )
        except Exception as exc:
            return _failure(started, exc)
        return RequestResult(
            ok=False, latency=time.perf_counter() - started, ttft=ttft, error="stream ended without a result"
        )


@dataclass(frozen=True)
class OpenAIChatApi:
    """POST /v1/chat/completions with stream=true.

    Tokens come from the `usage` the final chunk carries when the server sends one (transformers serve
    does; vLLM does when asked with `include_usage`); otherwise each non-empty content delta counts as one
    token (llama-cpp-python streams one token per chunk). `stream_options` is sent only with `include_usage`:
    transformers serve rejects fields it does not implement.
    """

    model: str | None = None
    include_usage: bool = False
    api_key: str | None = None  # sent as `Authorization: Bearer`, as the OpenAI SDK does

    async def send(self, client: httpx.AsyncClient, prompt: str, max_tokens: int) -> RequestResult:
        body: dict[str, Any] = {
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "stream": True,
            # Greedy, as our server decodes by default; llama-cpp-python would sample at 0.8 otherwise.
            "temperature": 0.0,
        }
        if self.model is not None:
            body["model"] = self.model
        if self.include_usage:
            body["stream_options"] = {"include_usage": True}
        started = time.perf_counter()
        ttft: float | None = None
        chunks = 0
        usage_tokens: int | None = None
        finished = False
        try:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key is not None else None
            async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
                if response.status_code != 200:
                    return RequestResult(
                        ok=False, latency=time.perf_counter() - started, error=await _error_label(response)
                    )
                async for event in iter_sse(response):
                    if event.data.strip() == "[DONE]":
                        finished = True
                        break
                    payload = json.loads(event.data)
                    if "error" in payload:
                        return RequestResult(
                            ok=False,
                            latency=time.perf_counter() - started,
                            ttft=ttft,
                            error=f"stream {str(payload['error'])[:80]}",
                        )
                    for choice in payload.get("choices") or []:
                        if (choice.get("delta") or {}).get("content"):
                            chunks += 1
                            if ttft is None:
                                ttft = time.perf_counter() - started
                        if choice.get("finish_reason"):
                            finished = True
                    usage = payload.get("usage")
                    if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
                        usage_tokens = int(usage["completion_tokens"])
        except Exception as exc:
            return _failure(started, exc)
        latency = time.perf_counter() - started
        if not finished:
            return RequestResult(ok=False, latency=latency, ttft=ttft, error="stream ended without finish_reason")
        if usage_tokens is not None:
            return RequestResult(ok=True, latency=latency, tokens=usage_tokens, ttft=ttft, token_source="usage")
        return RequestResult(ok=True, latency=latency, tokens=chunks, ttft=ttft, token_source="chunks")


async def run_level(
    api: Api,
    base_url: str,
    prompts: Sequence[str],
    *,
    concurrency: int,
    requests: int,
    max_tokens: int,
    request_timeout: float,
    level_timeout: float,
    warm_up: bool = True,
    first_prompt: int = 0,
) -> LevelResult:
    """One warm-up request (unless `warm_up` is false), then `requests` requests from `concurrency` closed-loop clients.

    Request i always gets prompts[(first_prompt + i) % len(prompts)], so every server sees the same sequence. The level
    ends when all requests are answered or after `level_timeout` seconds; requests cut off by that limit
    count as errors.
    """
    timeout = httpx.Timeout(request_timeout, connect=10.0)
    limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2)
    # trust_env=False: proxy variables set for the package registries must never reroute loopback traffic.
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits, trust_env=False) as client:
        if warm_up:
            # A failed warm-up is not fatal: the measured requests then show the server's state as errors.
            await api.send(client, WARMUP_PROMPT, max_tokens)

        results: list[RequestResult] = []
        issued = 0

        def take() -> int | None:
            # Single-threaded event loop: no lock is needed between the check and the increment.
            nonlocal issued
            if issued >= requests:
                return None
            issued += 1
            return issued - 1

        async def client_loop() -> None:
            while (index := take()) is not None:
                results.append(await api.send(client, prompts[(first_prompt + index) % len(prompts)], max_tokens))

        started = time.perf_counter()
        tasks = [asyncio.create_task(client_loop()) for _ in range(min(concurrency, requests))]
        try:
            async with asyncio.timeout(level_timeout):
                await asyncio.gather(*tasks)
        except TimeoutError:
            await asyncio.gather(*tasks, return_exceptions=True)
            cut_off = requests - len(results)
            results.extend(
                RequestResult(ok=False, latency=level_timeout, error="level time limit") for _ in range(cut_off)
            )
        finally:
            for task in tasks:
                task.cancel()
        wall_time = time.perf_counter() - started
    return LevelResult(concurrency=concurrency, requests=requests, wall_time=wall_time, results=tuple(results))
