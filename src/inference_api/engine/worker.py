"""One worker per device: it owns that device's model cache, a running batch, and one thread for model work.

The worker's loop runs on the event loop and hands each blocking step (load, prefill, one decode
step of the whole batch) to its thread. Between steps it is back on the loop: it admits waiting
requests into the batch, drops rows whose client left or whose deadline passed, and delivers each
row's text delta. A batch serves one (model, version) at a time; requests for another wait until it
drains, and a request kept waiting that way for `switch_after` seconds stops new joins so it can.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import torch

from inference_api.engine.batch import DecodeBatch
from inference_api.engine.queue import RequestQueue
from inference_api.engine.runner import Sequence, beam_search, new_sequence
from inference_api.engine.types import (
    Completion,
    Failure,
    FinishReason,
    GenerationRequest,
    TextDelta,
    TokenLogprob,
)
from inference_api.errors import ErrorCode, ServiceError
from inference_api.modeling.cache import LoadedModel, ModelCache
from inference_api.modeling.registry import ModelRef
from inference_api.observability.metrics import Metrics
from inference_api.torch_threads import ThreadTuner

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class WorkerStats:
    served: int = 0
    failed: int = 0
    cancelled: int = 0
    tokens_generated: int = 0
    steps: int = 0
    prefills: int = 0
    restarts: int = 0


class DeviceWorker:
    def __init__(
        self,
        name: str,
        cache: ModelCache,
        queue: RequestQueue,
        *,
        max_batch_size: int,
        join_wait: float = 0.0,
        switch_after: float = 2.0,
        threads: int | None = None,
        tune_threads: bool = False,
        metrics: Metrics | None = None,
    ) -> None:
        self.name = name
        self.metrics = metrics or Metrics()
        self.cache = cache
        self.max_batch_size = max_batch_size
        self.join_wait = join_wait
        self.switch_after = switch_after
        self._queue = queue
        # A new thread does not inherit the main thread's OpenMP team size, and left alone its matmuls
        # ran ~45% slower here (batch-32 step 82 ms against 55 ms); so the size is set in the thread.
        threads = threads or torch.get_num_threads()
        self._thread = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=name, initializer=torch.set_num_threads, initargs=(threads,)
        )
        # On the CPU the team size of decode steps follows what they measure (torch_threads.ThreadTuner).
        self.threads = ThreadTuner(threads, set_threads=torch.set_num_threads) if tune_threads else None
        self._batch: DecodeBatch | None = None
        self._ended_together = 0  # rows that left the batch at its last step, when that emptied it
        self._solo: GenerationRequest | None = None  # a beam search, served outside the batch
        self.stats = WorkerStats()

    @property
    def device(self) -> torch.device:
        return self.cache.device

    @property
    def batch_size(self) -> int:
        return len(self._batch) if self._batch is not None else 0

    def running(self) -> list[GenerationRequest]:
        """Requests this worker is generating for right now."""
        rows = [s.request for s in self._batch.sequences] if self._batch is not None else []
        return rows + ([self._solo] if self._solo is not None else [])

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run blocking model work on this worker's thread, keeping the event loop free."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, functools.partial(fn, *args, **kwargs))

    async def load(self, ref: ModelRef) -> LoadedModel:
        return await self.call(self.cache.get, ref)

    async def unload(self, base: str) -> int:
        return await self.call(self.cache.evict, base)

    def holds(self, request: GenerationRequest) -> bool:
        return self.cache.peek(request.model) is not None

    async def run(self) -> None:
        """Serve until the queue is closed and empty and the batch has drained."""
        while True:
            if self._batch is None:
                first = await self._queue.get(prefer=self.holds)
                if first is None:
                    return
                # Requests already waiting behind it share its prefill instead of paying for one of their own
                # a step later. Rows that ended together (clients in a loop, a batch that started together)
                # tend to come back within milliseconds: up to BATCH_JOIN_WAIT is given for as many to
                # arrive, so that they share one prefill and stay in step instead of drifting into
                # a prefill each. A lone request (ended alone) does not wait.
                company: list[GenerationRequest] = []
                expected, self._ended_together = self._ended_together - 1, 0
                if first.params.num_beams == 1:  # a beam search runs alone: nothing can share its prefill
                    joins = functools.partial(_batchable, ref=first.model)
                    if expected > 0 and self.join_wait > 0:
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(self.join_wait):
                                await self._queue.until_waiting(joins, expected)
                    company = self._queue.take(joins, self.max_batch_size - 1)
                await self._admit([first, *company])
            else:
                self._expire_waiting()
                room = self.max_batch_size - len(self._batch)
                if room > 0 and not self._must_drain() and self._time_to_join(room):
                    await self._admit(self._queue.take(self._joins_batch, room))
            if self._batch is not None:
                await self._step()

    def fail_in_flight(self, code: ErrorCode, message: str) -> None:
        """Give every request this worker holds an answer (used when the loop itself broke)."""
        for request in self.running():
            request.fail(code, message)
            self.stats.failed += 1
        self._batch = None
        self._solo = None
        self._report_batch()

    def _report_batch(self) -> None:
        self.metrics.batch(self.name, self.batch_size + (1 if self._solo is not None else 0))

    def _joins_batch(self, request: GenerationRequest) -> bool:
        assert self._batch is not None
        return _batchable(request, self._batch.model.ref)

    def _time_to_join(self, room: int) -> bool:
        """Let newcomers gather into one prefill rather than paying a prefill on nearly every step.

        Under steady load requests finish one at a time, and a one-request prefill costs about as
        much as a whole decode step of the batch; prefilled together, eight cost a third of that. So
        they join once a quarter of the batch's size is waiting (or the batch's room is full), or once
        the oldest has waited `join_wait` seconds, which bounds what this adds to time to first token.
        """
        assert self._batch is not None
        count, oldest = self._queue.waiting(self._joins_batch)
        if count == 0 or oldest is None:
            return False
        if count >= min(room, max(1, len(self._batch) // 4)):
            return True
        return time.monotonic() - oldest >= self.join_wait

    def _must_drain(self) -> bool:
        """True when the oldest waiting request cannot join and has waited long enough to get its turn."""
        oldest = self._queue.oldest()
        if oldest is None or self._joins_batch(oldest):
            return False
        return time.monotonic() - oldest.enqueued_at >= self.switch_after

    def _expire_waiting(self) -> None:
        for request in self._queue.expire(time.monotonic()):
            request.fail(ErrorCode.TIMEOUT, "the request deadline passed while it was queued")
            self.stats.failed += 1

    async def _admit(self, requests: list[GenerationRequest]) -> None:
        now = time.monotonic()
        live = []
        for request in requests:
            if request.cancelled:
                self.stats.cancelled += 1
            elif request.expired(now):
                request.fail(ErrorCode.TIMEOUT, "the request deadline passed while it was queued")
                self.stats.failed += 1
            else:
                request.started_at = now
                self.metrics.generation_started(request.model.base, request.model.version, now - request.enqueued_at)
                live.append(request)
        for request in [r for r in live if r.params.num_beams > 1]:
            await self._serve_beam(request)
        live = [r for r in live if r.params.num_beams == 1]
        if not live:
            return
        try:
            model = await self.load(live[0].model)
        except Exception as exc:
            self._fail(live, exc)
            return
        if self._batch is None:
            self._batch = DecodeBatch(model)
        batch = self._batch
        sequences = [new_sequence(model, r) for r in live]
        try:
            deltas = await self.call(batch.prefill, sequences)
        except Exception as exc:
            # The forward pass failed before the newcomers joined: the running rows are untouched.
            self._fail(live, exc)
            if not batch.sequences:
                self._batch = None
            return
        self.stats.prefills += 1
        self._deliver(batch, sequences, deltas)
        self._report_batch()

    async def _step(self) -> None:
        batch = self._batch
        assert batch is not None
        self._drop_abandoned(batch)
        if batch.sequences:
            try:
                deltas = (
                    await self.call(batch.step)
                    if self.threads is None
                    else await self.call(self.threads.run, batch.step)
                )
            except Exception as exc:
                self._fail([s.request for s in batch.sequences], exc)
                self._batch = None
                return
            self.stats.steps += 1
            self._deliver(batch, batch.sequences, deltas)
        if not batch.sequences:
            self._batch = None
        self._report_batch()

    def _drop_abandoned(self, batch: DecodeBatch) -> None:
        now = time.monotonic()
        leaving = []
        for seq in batch.sequences:
            if seq.request.cancelled:
                self.stats.cancelled += 1
                leaving.append(seq)
            elif seq.request.expired(now):
                seq.request.fail(ErrorCode.TIMEOUT, "the request deadline passed during generation")
                self.stats.failed += 1
                leaving.append(seq)
        batch.remove(leaving)

    def _deliver(self, batch: DecodeBatch, sequences: list[Sequence], deltas: list[str]) -> None:
        finished = []
        now = time.monotonic()
        for seq, delta in zip(list(sequences), deltas, strict=True):
            self._note_tokens(seq.request, seq.tokens_generated, now)
            fresh = seq.take_fresh() if seq.logprobs is not None else ()
            if delta or fresh:
                seq.request.emit(TextDelta(delta, fresh))
            if seq.finish_reason is not None:
                logprobs = tuple(seq.logprobs) if seq.logprobs is not None else None
                self._complete(seq.request, seq.assembler.text, seq.finish_reason, seq.tokens_generated, logprobs)
                finished.append(seq)
        batch.remove(finished)
        if not batch.sequences:
            self._ended_together = len(finished)

    def _note_tokens(self, request: GenerationRequest, count: int, now: float) -> None:
        """Time to first token (from entering the queue) and the gap per token after it."""
        new = count - request.tokens_delivered
        if new <= 0:
            return
        ref = request.model
        if request.last_token_at is None:
            self.metrics.first_token(ref.base, ref.version, now - request.enqueued_at)
        else:
            self.metrics.token_gap(ref.base, ref.version, (now - request.last_token_at) / new, new)
        request.tokens_delivered = count
        request.last_token_at = now

    async def _serve_beam(self, request: GenerationRequest) -> None:
        self._solo = request
        self._report_batch()
        try:
            model = await self.load(request.model)
            text, tokens, reason = await self.call(beam_search, model, request)
        except Exception as exc:
            self._fail([request], exc)
            return
        finally:
            self._solo = None
            self._report_batch()
        if request.cancelled:
            self.stats.cancelled += 1
        elif request.expired():
            request.fail(ErrorCode.TIMEOUT, "the request deadline passed during generation")
            self.stats.failed += 1
        else:
            if text:
                request.emit(TextDelta(text))
            self._note_tokens(request, tokens, time.monotonic())
            self._complete(request, text, reason, tokens)

    def _complete(
        self,
        request: GenerationRequest,
        text: str,
        reason: FinishReason,
        tokens: int,
        logprobs: tuple[TokenLogprob, ...] | None = None,
    ) -> None:
        started = request.started_at or request.enqueued_at
        self.stats.served += 1
        self.stats.tokens_generated += tokens
        request.emit(
            Completion(
                text=text,
                finish_reason=reason,
                model=request.model,
                prompt_tokens=len(request.prompt_ids),
                tokens_generated=tokens,
                queue_time=started - request.enqueued_at,
                generation_time=time.monotonic() - started,
                logprobs=logprobs,
            )
        )

    def _fail(self, requests: list[GenerationRequest], exc: Exception) -> None:
        """Answer each request with the error that fits; the worker itself carries on."""
        if isinstance(exc, ServiceError):
            failure = exc
        elif isinstance(exc, torch.OutOfMemoryError):
            logger.warning("device out of memory on %s; failing %d request(s)", self.name, len(requests))
            self._free_memory()
            failure = ServiceError(ErrorCode.OUT_OF_MEMORY, "the device ran out of memory for this request")
        else:
            logger.error("generation failed on %s", self.name, exc_info=exc)
            failure = ServiceError(ErrorCode.INTERNAL_ERROR, "generation failed; see the server log")
        for request in requests:
            if not request.cancelled:
                request.emit(Failure(failure))
                self.stats.failed += 1
            else:
                self.stats.cancelled += 1

    def _free_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def shutdown(self) -> None:
        self._thread.shutdown(wait=True, cancel_futures=True)


def _batchable(request: GenerationRequest, ref: ModelRef) -> bool:
    """Whether the request can decode in a batch of `ref`'s: the same model and version, and no beam search."""
    return request.model == ref and request.params.num_beams == 1
