"""Generation by an upstream OpenAI-compatible fleet (vLLM): the engine hands it the requests of upstream models.

A request's prompt is already encoded (here, or by the upstream's /tokenize) and held to the limits; it goes to the
upstream's `/v1/completions` as token ids, streamed, with `stream_options.include_usage`, so what is counted and
charged is what the upstream generated. Its deltas and completion are emitted on the `GenerationRequest` as the
local workers emit theirs, so every front-end, quota and metric works unchanged.

A connect error, a 5xx or a stream that breaks before any text was delivered is sent once more, to another replica;
after text was delivered it is the request's error. Cancelling a request (its client left) closes the upstream
connection at once, which makes vLLM abort the generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import httpx

from inference_api.api.request_context import request_id_var
from inference_api.engine.grammar import GrammarSpec
from inference_api.engine.types import Completion, Failure, FinishReason, GenerationRequest, TextDelta
from inference_api.errors import ErrorCode, ServiceError
from inference_api.modeling.prompt import EncodedPrompt, Message
from inference_api.modeling.registry import ModelRegistry
from inference_api.observability.metrics import Metrics
from inference_api.settings import Settings
from inference_api.upstream.replicas import Replica, ReplicaSet

logger = logging.getLogger(__name__)

_ERROR_BODY_LIMIT = 64 * 1024  # what is read of an upstream's error body
# How a too-long prompt is said: vLLM's messages, OpenAI's code (which our own server sends too).
_TOO_LONG = ("maximum context length", "maximum model length", "context_length_exceeded", "token_limit_exceeded")


class _Retry(Exception):
    """The attempt failed before any text reached the caller: it may go to another replica."""

    def __init__(self, error: ServiceError) -> None:
        super().__init__(error.message)
        self.error = error


class UpstreamBackend:
    """The upstream models' replica sets, one HTTP client for all of them, and the health checks."""

    def __init__(
        self,
        registry: ModelRegistry,
        settings: Settings,
        metrics: Metrics,
        *,
        environ: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        environ = os.environ if environ is None else environ
        self._metrics = metrics
        self._health_interval = settings.upstream_health_interval
        self._connect_timeout = settings.upstream_connect_timeout
        self._sets: dict[str, ReplicaSet] = {}
        for spec in registry.specs():
            if spec.upstream is None:
                continue
            if spec.upstream.api_key_env is not None:
                key = environ.get(spec.upstream.api_key_env)
            elif settings.backend == "openai" and spec.name == registry.default.base and settings.upstream_api_key:
                key = settings.upstream_api_key.get_secret_value()
            else:
                key = None
            self._sets[spec.name] = ReplicaSet.of(spec, key)
        timeout = httpx.Timeout(settings.request_timeout, connect=settings.upstream_connect_timeout)
        # No pool limit of httpx's own: each replica's max_in_flight is the limit.
        # Idle connections are dropped here before the upstream drops them: vLLM (uvicorn) closes one idle for 5 s,
        # and a request sent on a connection the server has just closed fails with a ReadError before its first
        # byte (seen as a health probe taking the only replica out in the middle of a benchmark).
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=1024, keepalive_expiry=2.0)
        self._client = httpx.AsyncClient(timeout=timeout, limits=limits, transport=transport)
        self._running: dict[GenerationRequest, asyncio.Task[None]] = {}
        self._health_task: asyncio.Task[None] | None = None

    def serves(self, base: str) -> bool:
        return base in self._sets

    @property
    def models(self) -> list[str]:
        return list(self._sets)

    def available(self, base: str) -> bool:
        """Whether one of the model's replicas is healthy."""
        return any(replica.healthy for replica in self._sets[base].replicas)

    # --- life ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """One round of health checks now (so a replica that is down is known before the first request), then one
        every UPSTREAM_HEALTH_INTERVAL."""
        await self.check_health()
        self._health_task = asyncio.create_task(self._check_forever(), name="upstream-health")

    async def drain(self, seconds: float) -> None:
        """Let the requests under way finish, up to `seconds`."""
        tasks = list(self._running.values())
        if tasks:
            await asyncio.wait(tasks, timeout=seconds)

    async def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        for request, task in list(self._running.items()):
            request.fail(ErrorCode.SHUTTING_DOWN, "the server shut down during generation")
            task.cancel()
        if self._running:
            await asyncio.wait(list(self._running.values()), timeout=5)
        await self._client.aclose()

    # --- requests ------------------------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> None:
        """Start generating `request` upstream; its events arrive on the request as the local workers' do."""
        task = asyncio.create_task(self._generate(request), name=f"upstream-{request.id}")
        self._running[request] = task
        task.add_done_callback(lambda _: self._running.pop(request, None))

    def cancel(self, request: GenerationRequest) -> None:
        """The caller left: close the upstream request now (its connection closes; vLLM aborts the generation)."""
        task = self._running.get(request)
        if task is not None:
            task.cancel()

    async def _generate(self, request: GenerationRequest) -> None:
        replicas = self._sets[request.model.base]
        request.started_at = time.monotonic()
        tried: list[Replica] = []
        try:
            async with asyncio.timeout_at(request.deadline):
                while True:
                    try:
                        replica = replicas.pick(request.affinity, exclude=tried)
                    except ServiceError as exc:
                        request.emit(Failure(exc))
                        return
                    try:
                        await self._attempt(request, replicas, replica)
                        return
                    except _Retry as retry:
                        tried.append(replica)
                        if len(tried) >= 2 or len(tried) >= len(replicas.replicas):
                            request.emit(Failure(retry.error))
                            return
                        logger.warning("upstream %s failed before its first byte (%s); retrying", replica.url, retry)
        except TimeoutError:
            request.fail(ErrorCode.TIMEOUT, "the request took longer than REQUEST_TIMEOUT")
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("upstream generation failed")
            request.fail(ErrorCode.INTERNAL_ERROR, "the upstream request failed unexpectedly; see the server log")

    async def _attempt(self, request: GenerationRequest, replicas: ReplicaSet, replica: Replica) -> None:
        """One try on one replica: emits the deltas and the completion, or a failure; raises _Retry when nothing
        was delivered yet and another replica may do better."""
        body = completion_body(replicas, request)
        delivered = False
        parts: list[str] = []
        sent_at = time.monotonic()
        replica.in_flight += 1
        self._gauge(replicas, replica)
        outcome = "error"
        try:
            async with self._client.stream(
                "POST", f"{replica.url}/completions", json=body, headers=self._headers(replicas)
            ) as response:
                headers_at = time.monotonic()
                replica.observe_latency(headers_at - sent_at)
                if response.status_code != 200:
                    error = _error_from(response.status_code, await _read_bounded(response), replica.url)
                    replica.last_error = f"HTTP {response.status_code}"
                    if response.status_code >= 500:
                        replica.errors += 1
                        outcome = "retried"
                        raise _Retry(error)
                    request.emit(Failure(error))
                    return
                finish: str | None = None
                usage: dict[str, Any] | None = None
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if isinstance(chunk.get("error"), dict):
                        raise _StreamBroken(str(chunk["error"].get("message", "an error event"))[:200])
                    for choice in chunk.get("choices") or []:
                        text = choice.get("text") or ""
                        if text:
                            parts.append(text)
                            delivered = True
                            self._delivered(request)
                            request.emit(TextDelta(text))
                        if choice.get("finish_reason"):
                            finish = choice["finish_reason"]
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                if finish is None:
                    raise _StreamBroken("the stream ended without a finish reason")
                done_at = time.monotonic()
                generated = int(usage["completion_tokens"]) if usage else request.tokens_delivered
                request.emit(
                    Completion(
                        text="".join(parts),
                        finish_reason=_finish_reason(finish),
                        model=request.model,
                        prompt_tokens=int(usage["prompt_tokens"]) if usage else len(request.prompt_ids),
                        tokens_generated=generated,
                        queue_time=headers_at - request.enqueued_at,
                        generation_time=done_at - headers_at,
                    )
                )
                replica.served += 1
                outcome = "ok"
        except (httpx.TransportError, _StreamBroken, json.JSONDecodeError) as exc:
            replica.errors += 1
            replica.last_error = type(exc).__name__
            if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
                self._mark(replicas, replica, healthy=False, reason=type(exc).__name__)
            error = ServiceError(
                ErrorCode.DEPENDENCY_UNAVAILABLE,
                "the upstream replica serving this request failed during generation; retry",
                retry_after=1,
            )
            if not delivered:
                outcome = "retried"
                raise _Retry(error) from None
            request.emit(Failure(error))
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            replica.in_flight -= 1
            self._gauge(replicas, replica)
            self._metrics.upstream_request(replicas.name, replica.url, outcome, time.monotonic() - sent_at)

    def _delivered(self, request: GenerationRequest) -> None:
        """Time to first token and inter-token latency, as the service's client sees them."""
        now = time.monotonic()
        ref = request.model
        if request.last_token_at is None:
            self._metrics.first_token(ref.base, ref.version, now - request.enqueued_at)
        else:
            self._metrics.token_gap(ref.base, ref.version, now - request.last_token_at)
        request.tokens_delivered += 1
        request.last_token_at = now

    def _headers(self, replicas: ReplicaSet) -> dict[str, str]:
        headers = {"Accept": "text/event-stream"}
        if replicas.api_key:
            headers["Authorization"] = f"Bearer {replicas.api_key}"
        request_id = request_id_var.get()
        if request_id:
            headers["X-Request-ID"] = request_id
        return headers

    # --- prompts encoded by the upstream ----------------------------------------------------------------

    async def encode_chat(self, base: str, version: str, messages: list[Message]) -> EncodedPrompt:
        """The conversation in the upstream model's chat template, by its /tokenize."""
        return await self._tokenize(base, version, {"messages": messages, "add_generation_prompt": True})

    async def encode_raw(self, base: str, version: str, text: str) -> EncodedPrompt:
        return await self._tokenize(base, version, {"prompt": text, "add_special_tokens": True})

    async def _tokenize(self, base: str, version: str, body: dict[str, Any]) -> EncodedPrompt:
        replicas = self._sets[base]
        tried: list[Replica] = []
        while True:
            replica = replicas.pick(exclude=tried)
            try:
                response = await self._client.post(
                    f"{replica.root}/tokenize",
                    json={"model": replicas.upstream_model(version), **body},
                    headers=self._headers(replicas),
                )
            except httpx.TransportError as exc:
                if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
                    self._mark(replicas, replica, healthy=False, reason=type(exc).__name__)
                tried.append(replica)
                if len(tried) >= 2 or len(tried) >= len(replicas.replicas):
                    raise ServiceError(
                        ErrorCode.DEPENDENCY_UNAVAILABLE, "the upstream could not count the prompt's tokens; retry"
                    ) from None
                continue
            if response.status_code != 200:
                raise _error_from(response.status_code, response.content[:_ERROR_BODY_LIMIT], replica.url)
            answer = response.json()
            return EncodedPrompt([int(t) for t in answer["tokens"]], int(answer["max_model_len"]))

    # --- health ----------------------------------------------------------------------------------------

    async def _check_forever(self) -> None:
        while True:
            await asyncio.sleep(self._health_interval)
            try:
                await self.check_health()
            except Exception:
                logger.exception("checking the upstream replicas failed")

    async def check_health(self) -> None:
        """Every replica's /health (vLLM's), or else its /v1/models: 200 puts it in, anything else takes it out."""
        checks = [(replicas, replica) for replicas in self._sets.values() for replica in replicas.replicas]
        results = await asyncio.gather(*(self._probe(replicas, replica) for replicas, replica in checks))
        for (replicas, replica), reason in zip(checks, results, strict=True):
            replica.checked_at = time.monotonic()
            self._mark(replicas, replica, healthy=reason is None, reason=reason)

    async def _probe(self, replicas: ReplicaSet, replica: Replica) -> str | None:
        """None when the replica answers; else why not."""
        # A busy replica answers its health check late, not never: a few seconds, however often it is checked.
        timeout = httpx.Timeout(5.0, connect=self._connect_timeout)
        for url in (f"{replica.root}/health", f"{replica.url}/models"):
            try:
                try:
                    response = await self._client.get(url, headers=self._headers(replicas), timeout=timeout)
                except (httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError):
                    # A pooled connection the replica closed meanwhile, not a replica that is down: once more, anew.
                    response = await self._client.get(url, headers=self._headers(replicas), timeout=timeout)
            except httpx.HTTPError as exc:
                return type(exc).__name__
            if response.status_code == 200:
                return None
        return f"HTTP {response.status_code}"

    def _mark(self, replicas: ReplicaSet, replica: Replica, *, healthy: bool, reason: str | None) -> None:
        if replica.healthy != healthy:
            if healthy:
                logger.info("upstream replica %s of %s is back", replica.url, replicas.name)
            else:
                logger.warning("upstream replica %s of %s is out: %s", replica.url, replicas.name, reason)
        replica.healthy = healthy
        if reason is not None:
            replica.last_error = reason
        self._gauge(replicas, replica)

    def _gauge(self, replicas: ReplicaSet, replica: Replica) -> None:
        self._metrics.upstream_replica(replicas.name, replica.url, healthy=replica.healthy, in_flight=replica.in_flight)

    def snapshot(self) -> list[dict[str, Any]]:
        return [replicas.snapshot() for replicas in self._sets.values()]


class _StreamBroken(Exception):
    """The upstream's event stream ended or broke before its finish."""


def completion_body(replicas: ReplicaSet, request: GenerationRequest) -> dict[str, Any]:
    """The upstream /v1/completions body: the prompt as token ids and the request's sampling parameters."""
    params = request.params
    body: dict[str, Any] = {
        "model": replicas.upstream_model(request.model.version),
        "prompt": request.prompt_ids,
        "max_tokens": params.max_new_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if params.greedy:
        body["temperature"] = 0.0
    else:
        body["temperature"] = params.temperature
        body["top_p"] = params.top_p
        if params.top_k > 0:
            body["top_k"] = params.top_k
    if params.seed is not None:
        body["seed"] = params.seed
    if params.stop:
        body["stop"] = list(params.stop)
    if params.presence_penalty:
        body["presence_penalty"] = params.presence_penalty
    if params.frequency_penalty:
        body["frequency_penalty"] = params.frequency_penalty
    if params.repetition_penalty != 1.0:
        body["repetition_penalty"] = params.repetition_penalty
    if params.logit_bias:
        body["logit_bias"] = {str(token): bias for token, bias in params.logit_bias}
    if params.min_tokens:
        body["min_tokens"] = params.min_tokens
    if request.structured is not None:
        body["structured_outputs"] = structured_outputs(request.structured)
    return body


def structured_outputs(spec: GrammarSpec) -> dict[str, Any]:
    """vLLM's `structured_outputs` for what the output must match (our own server takes the same field)."""
    if spec.kind == "json_object":
        return {"json_object": True}
    if spec.kind == "json_schema":
        return {"json": json.loads(spec.source)}
    if spec.kind == "choice":
        return {"choice": json.loads(spec.source)}
    return {spec.kind: spec.source}  # "regex" or "grammar"


def _finish_reason(value: str) -> FinishReason:
    return "length" if value == "length" else "stop"


async def _read_bounded(response: httpx.Response) -> bytes:
    body = b""
    async for part in response.aiter_bytes():
        body += part
        if len(body) >= _ERROR_BODY_LIMIT:
            break
    return body[:_ERROR_BODY_LIMIT]


def _error_from(status: int, raw: bytes, url: str) -> ServiceError:
    """An upstream's refusal in our envelope: never its raw body, never a 500."""
    message = ""
    code = ""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        parsed = json.loads(raw)
        error = parsed.get("error", parsed)
        if isinstance(error, dict):
            message = str(error.get("message", ""))
            code = str(error.get("code", "") or error.get("type", ""))
    said = " ".join(message.split())[:300]
    logger.warning("upstream %s answered HTTP %d: %s", url, status, said or "(no message)")
    if status == 400 and any(s in f"{message} {code}".lower() for s in _TOO_LONG):
        return ServiceError(ErrorCode.TOKEN_LIMIT_EXCEEDED, f"the upstream refused the prompt as too long: {said}")
    if status in (400, 422):
        return ServiceError(
            ErrorCode.VALIDATION_ERROR, f"the upstream refused the request: {said or 'no reason given'}"
        )
    if status == 404:
        return ServiceError(ErrorCode.MODEL_NOT_READY, "the upstream does not serve this model (check the registry)")
    if status == 429:
        return ServiceError(ErrorCode.OVERLOADED, "the upstream is at capacity; retry shortly", retry_after=1)
    if status in (401, 403):
        return ServiceError(ErrorCode.DEPENDENCY_UNAVAILABLE, "the upstream refused this server's credentials")
    return ServiceError(
        ErrorCode.DEPENDENCY_UNAVAILABLE, f"the upstream answered HTTP {status}; retry shortly", retry_after=1
    )
