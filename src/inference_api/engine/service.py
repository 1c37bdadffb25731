"""The engine facade the HTTP layer talks to: admission, routing to workers, readiness, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from inference_api.engine.grammar import Grammars
from inference_api.engine.queue import RequestQueue
from inference_api.engine.types import Completion, Failure, GenerationRequest, SamplingParams, TokenBudget
from inference_api.engine.worker import DeviceWorker
from inference_api.errors import ErrorCode, ServiceError
from inference_api.modeling.cache import ModelCache
from inference_api.modeling.loader import resolve_precision, worker_devices
from inference_api.modeling.prompt import PromptEncoder
from inference_api.modeling.registry import ModelRef, ModelRegistry
from inference_api.observability.metrics import Metrics
from inference_api.settings import Settings
from inference_api.torch_threads import usable_cpus

if TYPE_CHECKING:
    from inference_api.upstream.backend import UpstreamBackend

logger = logging.getLogger(__name__)

EngineState = Literal["starting", "loading", "ready", "failed", "draining", "stopped"]
_WARM_UP_PROMPT = [{"role": "user", "content": "Hello"}]


@dataclass(frozen=True)
class EngineLimits:
    max_input_tokens: int
    max_new_tokens: int
    request_timeout: float


class Engine:
    def __init__(
        self,
        registry: ModelRegistry,
        encoder: PromptEncoder,
        workers: list[DeviceWorker],
        queue: RequestQueue,
        limits: EngineLimits,
        metrics: Metrics | None = None,
    ) -> None:
        self.registry = registry
        self.metrics = metrics or Metrics()
        self.encoder = encoder
        self.grammars = Grammars(encoder.tokenizer)
        self.workers = workers
        self.queue = queue
        self.limits = limits
        self.state: EngineState = "starting"
        self.budget: TokenBudget | None = None  # token quotas, set by the composition root
        # The models served by an upstream fleet (registry entries with `upstream:`), set by the composition root;
        # their requests go there instead of the queue, with the same admission, budget, events and metrics.
        self.upstream: UpstreamBackend | None = None
        # Called with a base model's name when one of its versions is loaded or it is unloaded on request.
        self.on_model_change: list[Callable[[str], object]] = []
        self.failure: str | None = None
        self.started_at = time.time()
        self._tasks: list[asyncio.Task[None]] = []
        self._memory_retry_after: int | None = None  # set while device memory is critical
        self._drain_started: float | None = None  # monotonic time of SIGTERM
        self._drain_timer: asyncio.TimerHandle | None = None
        self.cut_by_drain = 0  # requests answered SHUTTING_DOWN because DRAIN_TIMEOUT passed
        # Every request admitted and not yet answered, wherever it is: queued, being prefilled, in a batch.
        self._unanswered: set[GenerationRequest] = set()

    @classmethod
    def build(
        cls, settings: Settings, registry: ModelRegistry, encoder: PromptEncoder, metrics: Metrics | None = None
    ) -> Engine:
        metrics = metrics or Metrics()
        queue = RequestQueue(settings.max_queue, on_depth=metrics.queued)
        workers = []
        for device in worker_devices(settings.device):
            cache = ModelCache(
                registry,
                data_dir=settings.data_dir,
                device=device,
                precision=resolve_precision(settings.dtype, device),
                capacity=settings.cache_size,
                pinned=frozenset({registry.default}),
                metrics=metrics,
                prefix_tokens=settings.prefix_cache_tokens,
            )
            workers.append(
                DeviceWorker(
                    f"worker-{device}",
                    cache,
                    queue,
                    max_batch_size=settings.max_batch_size,
                    join_wait=settings.batch_join_wait,
                    threads=(settings.torch_threads or usable_cpus()) if device.type == "cpu" else None,
                    tune_threads=settings.tune_threads and device.type == "cpu",
                    metrics=metrics,
                )
            )
        limits = EngineLimits(settings.max_input_tokens, settings.max_new_tokens, settings.request_timeout)
        return cls(registry, encoder, workers, queue, limits, metrics)

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    async def start(self, warm_up: bool = True) -> None:
        """Start the workers; loading and warming the default model goes on in the background."""
        self._tasks = [asyncio.create_task(self._supervise(w), name=w.name) for w in self.workers]
        if warm_up:
            self._tasks.append(asyncio.create_task(self._warm_up(), name="warm-up"))

    async def _supervise(self, worker: DeviceWorker) -> None:
        """Run a worker's loop; if the loop itself breaks, answer its requests and start it again."""
        while True:
            try:
                await worker.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("worker %s failed; restarting it", worker.name)
                worker.fail_in_flight(ErrorCode.INTERNAL_ERROR, "the worker serving this request failed")
                worker.stats.restarts += 1
                await asyncio.sleep(0.1)  # a loop that fails at once must not spin

    def is_upstream(self, base: str) -> bool:
        return self.upstream is not None and self.upstream.serves(base)

    async def _warm_up(self) -> None:
        self.state = "loading"
        ref = self.registry.default
        if self.is_upstream(ref.base):
            # No weights here: the fleet's health was checked when the backend started. A tokenizer folder is read
            # now (about 2 CPU-seconds on 2 cores), so that "ready" means the first requests do not wait for it.
            if self.encoder.encodes_here(ref.base):
                try:
                    await asyncio.to_thread(self.encoder.encode_chat, ref.base, _WARM_UP_PROMPT)
                except Exception as exc:
                    logger.exception("loading the upstream model's tokenizer failed")
                    self._fail(type(exc).__name__)
                    return
            self.state = "ready"
            logger.info("default model %s is served upstream", ref)
            return
        try:
            started = time.perf_counter()
            for worker in self.workers:
                await worker.load(ref)
            encoded = await asyncio.to_thread(self.encoder.encode_chat, ref.base, _WARM_UP_PROMPT)
            # With its shared prefix: the system block is then ready for the first chat request too.
            params = SamplingParams(max_new_tokens=2)
            request = GenerationRequest(ref, encoded.ids, params, shared_prefix=encoded.shared_prefix)
            self.queue.put_nowait(request)
            await request.result()
        except ServiceError as exc:
            self._fail(exc.message)
            return
        except Exception as exc:
            logger.exception("loading the default model failed")
            self._fail(type(exc).__name__)
            return
        if self.state == "loading":
            self.state = "ready"
            logger.info("default model %s ready in %.1fs", ref, time.perf_counter() - started)

    def _fail(self, reason: str) -> None:
        self.state = "failed"
        self.failure = reason
        logger.error("the default model could not be loaded: %s", reason)

    def check_accepting(self) -> None:
        """Raise the error a new request would get now: shutting down, not ready yet, or memory critical."""
        if self.state in ("draining", "stopped"):
            self.metrics.request_rejected("shutting_down")
            raise ServiceError(ErrorCode.SHUTTING_DOWN, "the server is shutting down", retry_after=5)
        if self.state == "failed":
            raise ServiceError(ErrorCode.MODEL_NOT_READY, "the default model failed to load; see the server log")
        if not self.ready:
            raise ServiceError(ErrorCode.MODEL_NOT_READY, "the model is still loading; retry shortly", retry_after=5)
        if self._memory_retry_after is not None:
            self.metrics.request_rejected("memory")
            raise ServiceError(
                ErrorCode.OVERLOADED,
                "device memory is critically full; new requests are refused until it falls back",
                retry_after=self._memory_retry_after,
            )

    def refuse_for_memory(self, retry_after: int | None) -> None:
        """The memory monitor's switch: refuse new work (answering Retry-After: `retry_after`), or None to accept."""
        self._memory_retry_after = retry_after

    def admit(self, request: GenerationRequest) -> None:
        """Queue a request or refuse it at once; no token budget is reserved (`submit` does that)."""
        self.check_accepting()
        request.on_finish = self._finished
        if self.upstream is not None and self.upstream.serves(request.model.base):
            self._unanswered.add(request)
            self.upstream.submit(request)
            return
        try:
            self.queue.put_nowait(request)
        except ServiceError as exc:
            self.metrics.request_rejected("queue_full" if exc.code is ErrorCode.OVERLOADED else "shutting_down")
            raise
        self._unanswered.add(request)

    def _finished(self, request: GenerationRequest, outcome: Completion | Failure) -> None:
        """Count a generation's end, and add it to the HTTP request it served (for the access line)."""
        self._unanswered.discard(request)
        ref = request.model
        if isinstance(outcome, Failure):
            self.metrics.generation_failed(ref.base, ref.version, outcome.error.code)
            return
        record = request.record
        self.metrics.generation_completed(
            ref.base,
            ref.version,
            record.domain if record is not None else "internal",
            outcome.prompt_tokens,
            outcome.tokens_generated,
            outcome.generation_time,
        )
        if record is not None:
            record.note_generation(
                outcome.prompt_tokens, outcome.tokens_generated, outcome.queue_time, outcome.generation_time
            )

    async def check_budget(self, owner: str, max_new_tokens: int) -> None:
        """Refuse at once a request its owner's token budget could not take now (nothing is reserved)."""
        if self.budget is not None:
            await self.budget.check(owner, max_new_tokens)

    async def submit(self, request: GenerationRequest) -> None:
        """Reserve the owner's token budget, then queue the request; what it did not use is given back."""
        self.check_accepting()  # a doomed request reserves nothing
        if self.budget is not None and request.owner is not None:
            await self.budget.reserve(request)
        try:
            self.admit(request)
        except BaseException:
            request.settle(0)
            raise

    def cancel(self, request: GenerationRequest) -> None:
        """The caller is gone: drop the request from the queue, or let its worker stop after this step."""
        if not request.cancelled and not request.finished:
            self.metrics.request_cancelled("disconnect")
        request.cancelled = True
        self._unanswered.discard(request)
        self.queue.remove(request)
        if self.upstream is not None:
            self.upstream.cancel(request)
        # A cancelled request gets no final event from its worker; its reservation is refunded now.
        request.settle(0)

    async def generate(self, request: GenerationRequest) -> Completion:
        await self.submit(request)
        try:
            return await request.result()
        except asyncio.CancelledError:
            self.cancel(request)
            raise

    async def load_model(self, ref: ModelRef) -> None:
        self.registry.resolve(ref)
        if self.is_upstream(ref.base):
            return  # its upstream holds it; nothing is loaded here
        try:
            await self._worker_for(ref).load(ref)
        except ServiceError:
            raise
        except Exception as exc:
            logger.exception("loading %s failed", ref)
            raise ServiceError(
                ErrorCode.MODEL_LOAD_FAILED,
                f"loading {ref} failed ({type(exc).__name__}); see the server log",
            ) from exc
        finally:
            self._model_changed(ref.base)

    async def unload_model(self, base: str) -> int:
        self.registry.get(base)
        if base == self.registry.default.base:
            raise ServiceError(ErrorCode.VALIDATION_ERROR, f"{base!r} is the default model and stays loaded")
        if self.is_upstream(base):
            return 0
        self._model_changed(base)
        return sum([await w.unload(base) for w in self.workers])

    def _model_changed(self, base: str) -> None:
        for listener in self.on_model_change:
            listener(base)

    def loaded(self) -> set[ModelRef]:
        """The versions loaded here, and those of upstream models with a healthy replica."""
        served = set()
        if self.upstream is not None:
            for base in self.upstream.models:
                if self.upstream.available(base):
                    served |= {ModelRef(base, version) for version in self.registry.get(base).versions}
        return {ref for w in self.workers for ref in w.cache.refs()} | served

    def _worker_for(self, ref: ModelRef) -> DeviceWorker:
        for worker in self.workers:
            if worker.cache.peek(ref) is not None:
                return worker
        return self.workers[0]

    def begin_drain(self, timeout: float | None = None) -> None:
        """SIGTERM: readiness turns 503 and new requests are refused; accepted ones keep being served.

        With `timeout` (DRAIN_TIMEOUT), whatever is still queued or running when it has passed is answered
        SHUTTING_DOWN then, by the engine, while its handler can still send the envelope: left to the
        server's own graceful-shutdown timeout, the handlers were cancelled first and their clients got a
        bare text/plain 500."""
        if self.state not in ("stopped",):
            self.state = "draining"
        self.queue.close()
        if self._drain_started is None:
            self._drain_started = time.monotonic()
        if timeout is not None and self._drain_timer is None:
            self._drain_timer = asyncio.get_running_loop().call_later(timeout, self.end_drain)

    def end_drain(self) -> int:
        """The drain's time is up: answer every queued and running request SHUTTING_DOWN now; how many."""
        cut = 0
        for request in self.queue.drain():
            request.fail(ErrorCode.SHUTTING_DOWN, "the server shut down before this request was served")
            cut += 1
        # Running, and also taken from the queue but not in a batch yet (a prefill under way): all of them.
        running = {request for worker in self.workers for request in worker.running()}
        for request in running | self._unanswered:
            if not request.finished:
                request.fail(
                    ErrorCode.SHUTTING_DOWN,
                    "the server shut down during generation (DRAIN_TIMEOUT passed); retry on another replica",
                )
                cut += 1
            # Its worker drops it at its next step (or before its prefill), as for a client that left.
            request.cancelled = True
            if self.upstream is not None:
                self.upstream.cancel(request)  # and an upstream's request is closed
        if cut:
            logger.warning("drain timeout: %d requests answered SHUTTING_DOWN", cut)
        self.cut_by_drain += cut
        return cut

    def drain_remaining(self, drain_timeout: float) -> float:
        """Seconds left of a drain of `drain_timeout` that began at SIGTERM (all of it if none began)."""
        if self._drain_started is None:
            return drain_timeout
        return max(0.0, drain_timeout - (time.monotonic() - self._drain_started))

    async def stop(self, drain_timeout: float = 30.0) -> None:
        """Stop accepting, let queued and running requests finish up to `drain_timeout`, then stop."""
        # The drain began at SIGTERM: what is left of it, not a second DRAIN_TIMEOUT on top (plus a moment
        # for workers to drop what end_drain answered).
        timeout = self.drain_remaining(drain_timeout) + 1.0
        self.begin_drain()
        if self._drain_timer is not None:
            self._drain_timer.cancel()
        if self.upstream is not None:  # its requests, then the workers' in what is left of the same time
            started = time.monotonic()
            await self.upstream.drain(timeout)
            timeout = max(0.0, timeout - (time.monotonic() - started))
        workers = [t for t in self._tasks if t.get_name() != "warm-up"]
        _, pending = await asyncio.wait(workers, timeout=timeout) if workers else (set(), set())
        for task in pending:
            task.cancel()
        for request in self.queue.drain():
            request.fail(ErrorCode.SHUTTING_DOWN, "the server shut down before this request was served")
        for worker in self.workers:
            worker.fail_in_flight(ErrorCode.SHUTTING_DOWN, "the server shut down during generation")
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for worker in self.workers:
            await asyncio.to_thread(worker.shutdown)
        self.state = "stopped"

    def snapshot(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "upstreams": self.upstream.snapshot() if self.upstream is not None else [],
            "queue": {"depth": len(self.queue), "max": self.queue.maxsize},
            "workers": [
                {
                    "name": w.name,
                    "device": str(w.device),
                    "dtype": w.cache.precision.name,
                    "busy": bool(w.running()),
                    "batch_size": w.batch_size,
                    "max_batch_size": w.max_batch_size,
                    "running": [r.id for r in w.running()],
                    "steps": w.stats.steps,
                    "restarts": w.stats.restarts,
                    "served": w.stats.served,
                    "failed": w.stats.failed,
                    "cancelled": w.stats.cancelled,
                    "tokens_generated": w.stats.tokens_generated,
                    "cached_models": [str(r) for r in w.cache.refs()],
                    "shared_prefixes": {
                        name: {
                            "entries": len(base.prefixes),
                            "tokens": base.prefixes.tokens,
                            "hits": base.prefixes.hits,
                            "misses": base.prefixes.misses,
                        }
                        for name, base in w.cache.loaded_bases().items()
                    },
                }
                for w in self.workers
            ],
        }
