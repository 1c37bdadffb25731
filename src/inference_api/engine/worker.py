"""One worker per device: it owns that device's model cache and a single thread for blocking model work.

The worker's loop runs on the event loop and hands each blocking step (load, prefill, one decode
step) to its thread. Between steps it is back on the loop, where it sees cancellations and
deadlines and delivers text deltas to the waiting request.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import torch

from inference_api.engine.queue import RequestQueue
from inference_api.engine.runner import ModelRunner, Sequence
from inference_api.engine.types import Completion, Failure, GenerationRequest, TextDelta
from inference_api.errors import ErrorCode, ServiceError
from inference_api.modeling.cache import LoadedModel, ModelCache
from inference_api.modeling.registry import ModelRef

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class WorkerStats:
    served: int = 0
    failed: int = 0
    cancelled: int = 0
    tokens_generated: int = 0


class DeviceWorker:
    def __init__(self, name: str, cache: ModelCache, queue: RequestQueue, runner: ModelRunner) -> None:
        self.name = name
        self.cache = cache
        self._queue = queue
        self._runner = runner
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.current: GenerationRequest | None = None
        self.stats = WorkerStats()

    @property
    def device(self) -> torch.device:
        return self.cache.device

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run blocking model work on this worker's thread, keeping the event loop free."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, functools.partial(fn, *args, **kwargs))

    async def load(self, ref: ModelRef) -> LoadedModel:
        return await self.call(self.cache.get, ref)

    async def unload(self, base: str) -> int:
        return await self.call(self.cache.evict, base)

    async def run(self) -> None:
        """Serve requests until the queue is closed and empty."""
        while (request := await self._queue.get()) is not None:
            self.current = request
            try:
                await self.serve(request)
            finally:
                self.current = None

    async def serve(self, request: GenerationRequest) -> None:
        """Take one request to its end: a completion, or a failure the caller can report."""
        if request.cancelled:
            self.stats.cancelled += 1
            return
        if request.expired():
            request.fail(ErrorCode.TIMEOUT, "the request deadline passed while it was queued")
            self.stats.failed += 1
            return
        request.started_at = time.monotonic()
        try:
            model = await self.load(request.model)
            if request.params.num_beams > 1:
                await self._beam_search(model, request)
            else:
                await self._decode(model, request)
        except ServiceError as exc:
            request.emit(Failure(exc))
        except torch.OutOfMemoryError:
            logger.warning("device out of memory serving %s on %s", request.id, self.name)
            self._free_memory()
            request.fail(ErrorCode.OUT_OF_MEMORY, "the device ran out of memory for this request")
        except Exception:
            logger.exception("generation failed for request %s", request.id)
            request.fail(ErrorCode.INTERNAL_ERROR, "generation failed; see the server log")
        if request.cancelled:
            self.stats.cancelled += 1
        elif not request.finished:
            # Every path above ends in emit() unless the client left: this keeps that promise.
            request.fail(ErrorCode.INTERNAL_ERROR, "generation ended without a result")
        elif request.started_at is not None:
            self.stats.served += 1

    async def _decode(self, model: LoadedModel, request: GenerationRequest) -> None:
        seq, delta = await self.call(self._runner.prefill, model, request)
        try:
            self._deliver(request, delta)
            while seq.finish_reason is None:
                if request.cancelled:
                    return
                if request.expired():
                    request.fail(ErrorCode.TIMEOUT, "the request deadline passed during generation")
                    return
                delta = await self.call(self._runner.decode, model, seq)
                self._deliver(request, delta)
            self._complete(request, seq)
        finally:
            self._runner.release(seq)

    async def _beam_search(self, model: LoadedModel, request: GenerationRequest) -> None:
        text, tokens, reason = await self.call(self._runner.beam_search, model, request)
        if request.cancelled:
            return
        if request.expired():
            request.fail(ErrorCode.TIMEOUT, "the request deadline passed during generation")
            return
        self._deliver(request, text)
        self.stats.tokens_generated += tokens
        request.emit(self._completion(request, text, reason, tokens))

    def _deliver(self, request: GenerationRequest, delta: str) -> None:
        if delta:
            request.emit(TextDelta(delta))

    def _complete(self, request: GenerationRequest, seq: Sequence) -> None:
        assert seq.finish_reason is not None
        self.stats.tokens_generated += seq.tokens_generated
        request.emit(self._completion(request, seq.assembler.text, seq.finish_reason, seq.tokens_generated))

    def _completion(self, request: GenerationRequest, text: str, reason: str, tokens: int) -> Completion:
        started = request.started_at or request.enqueued_at
        return Completion(
            text=text,
            finish_reason="stop" if reason == "stop" else "length",
            model=request.model,
            prompt_tokens=len(request.prompt_ids),
            tokens_generated=tokens,
            queue_time=started - request.enqueued_at,
            generation_time=time.monotonic() - started,
        )

    def _free_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def shutdown(self) -> None:
        self._thread.shutdown(wait=True, cancel_futures=True)
