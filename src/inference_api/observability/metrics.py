"""Every Prometheus collector of the service, in one place (names and labels: SPEC §6, the metrics contract).

Each app gets its own registry, so tests can build many apps in one process. With several uvicorn
worker processes (PROMETHEUS_MULTIPROC_DIR set before start) prometheus-client writes each value to a
per-process file and the export merges every process's files; gauges say how they merge.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from inference_api.errors import ErrorCode

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REJECT_REASONS = ("queue_full", "shutting_down", "memory", "rate_limited", "quota")
CANCEL_REASONS = ("disconnect", "timeout")
DOMAINS = ("infer", "chat", "openai")
# Codes a generation can end with, initialised so the series exist before the first failure.
ENGINE_FAILURES = (
    ErrorCode.TIMEOUT,
    ErrorCode.OUT_OF_MEMORY,
    ErrorCode.INTERNAL_ERROR,
    ErrorCode.SHUTTING_DOWN,
    ErrorCode.MODEL_LOAD_FAILED,
)

_LATENCY = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
_SIZES = (100.0, 1_000.0, 10_000.0, 100_000.0, 1_000_000.0, 10_000_000.0, 100_000_000.0)
_TOKEN_GAP = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
_QUEUE = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_LOAD = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

MODEL = ("model", "version")


def multiprocess_dir() -> str | None:
    """The folder of per-process files when prometheus-client runs in multiprocess mode, else None.

    prometheus-client decides once, at import, from PROMETHEUS_MULTIPROC_DIR; this asks what it decided.
    """
    if getattr(values.ValueClass, "_multiprocess", False):
        return os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return None


class Metrics:
    """The collectors, and plain methods for the events they count, for the HTTP layer, engine and stores."""

    def __init__(self, *, default_model: tuple[str, str] | None = None, queue_capacity: int | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.api_requests = Counter(
            "api_requests_total",
            "HTTP requests by route template and status",
            ["endpoint", "status", *MODEL],
            registry=r,
        )
        self.api_response_time = Histogram(
            "api_response_time_seconds",
            "Time from request to the last byte of the response",
            ["endpoint", *MODEL],
            buckets=_LATENCY,
            registry=r,
        )
        self.api_request_size = Histogram(
            "api_request_size_bytes", "Request body size", ["endpoint"], buckets=_SIZES, registry=r
        )
        self.api_response_size = Histogram(
            "api_response_size_bytes", "Response body size", ["endpoint"], buckets=_SIZES, registry=r
        )
        self.model_load_time = Histogram(
            "model_load_time_seconds", "Time to load a model version", MODEL, buckets=_LOAD, registry=r
        )
        self.model_load_failures = Counter("model_load_failures_total", "Model loads that failed", MODEL, registry=r)
        self.model_memory = Gauge(
            "model_memory_usage_bytes",
            "Weights held for a loaded version (a base's for the base, an adapter's own for an adapter)",
            MODEL,
            multiprocess_mode="livesum",
            registry=r,
        )
        self.token_generation_time = Histogram(
            "token_generation_time_seconds", "Generation time of a request", MODEL, buckets=_LATENCY, registry=r
        )
        self.tokens_generated = Counter("tokens_generated_total", "Tokens generated", MODEL, registry=r)
        self.prompt_tokens = Counter("prompt_tokens_total", "Prompt tokens of served requests", MODEL, registry=r)
        self.cache_hits = Counter("model_cache_hits_total", "Model cache hits", MODEL, registry=r)
        self.cache_misses = Counter("model_cache_misses_total", "Model cache misses (loads)", MODEL, registry=r)
        self.successful_inferences = Counter(
            "successful_inferences_total", "Generations completed", [*MODEL, "domain"], registry=r
        )
        self.failed_inferences = Counter(
            "failed_inferences_total", "Generations that failed, by error code", [*MODEL, "error_type"], registry=r
        )
        self.time_to_first_token = Histogram(
            "time_to_first_token_seconds",
            "From entering the engine's queue to the first generated token",
            MODEL,
            buckets=_LATENCY,
            registry=r,
        )
        self.inter_token_latency = Histogram(
            "inter_token_latency_seconds", "Time between generated tokens", MODEL, buckets=_TOKEN_GAP, registry=r
        )
        self.request_queue_time = Histogram(
            "request_queue_time_seconds",
            "Time waiting in the queue before generation",
            MODEL,
            buckets=_QUEUE,
            registry=r,
        )
        self.queue_depth = Gauge("queue_depth", "Requests waiting", multiprocess_mode="livesum", registry=r)
        self.queue_capacity = Gauge(
            "queue_capacity", "Requests that may wait (MAX_QUEUE)", multiprocess_mode="livesum", registry=r
        )
        self.batch_size = Gauge("batch_size", "Requests being generated", multiprocess_mode="livesum", registry=r)
        # Sessions and chunks live in a store every process shares: each reports the same count.
        self.active_sessions = Gauge(
            "active_sessions", "Chat sessions stored", multiprocess_mode="livemostrecent", registry=r
        )
        self.vector_store_chunks = Gauge(
            "vector_store_chunks", "Document chunks stored", multiprocess_mode="livemostrecent", registry=r
        )
        self.requests_rejected = Counter(
            "requests_rejected_total", "Requests refused at admission, by reason", ["reason"], registry=r
        )
        self.requests_cancelled = Counter(
            "requests_cancelled_total", "Generations stopped early, by reason", ["reason"], registry=r
        )
        # Per API key (its configured name, never the key): what quotas count, for operators.
        self.key_tokens = Counter(
            "key_tokens_generated_total", "Generated tokens charged to each API key", ["key"], registry=r
        )
        self.key_rejections = Counter(
            "key_requests_rejected_total",
            "Requests refused by a rate limit or token quota, by API key",
            ["key", "reason"],
            registry=r,
        )
        self.device_allocated = Gauge(
            "device_memory_allocated_bytes",
            "Memory in use (CPU: process RSS)",
            ["device"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.device_reserved = Gauge(
            "device_memory_reserved_bytes",
            "Memory reserved (CPU: process RSS)",
            ["device"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.device_total = Gauge(
            "device_memory_total_bytes",
            "Memory of the device (CPU: the machine or its cgroup limit)",
            ["device"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.device_pressure = Gauge(
            "device_memory_pressure",
            "0 ok, 1 warning, 2 critical",
            ["device"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.error_responses = Counter(
            "error_responses_total", "Error envelopes sent, by error code", ["code"], registry=r
        )
        self.response_cache_hits = Counter(
            "response_cache_hits_total", "Deterministic requests answered from the response cache", MODEL, registry=r
        )
        self.response_cache_misses = Counter(
            "response_cache_misses_total", "Deterministic requests the response cache did not hold", MODEL, registry=r
        )
        self.response_cache_bytes = Gauge(
            "response_cache_bytes", "Bytes the response cache holds", multiprocess_mode="livesum", registry=r
        )
        # Upstream replicas (upstream/): one series per model and replica URL (bounded: the registry lists them).
        replica = ["model", "replica"]
        self.upstream_healthy = Gauge(
            "upstream_replica_healthy", "1 while the replica passes its health checks", replica,
            multiprocess_mode="livemax", registry=r,
        )  # fmt: skip
        self.upstream_in_flight = Gauge(
            "upstream_replica_in_flight", "Requests open on the replica", replica,
            multiprocess_mode="livesum", registry=r,
        )  # fmt: skip
        self.upstream_requests = Counter(
            "upstream_requests_total", "Requests sent to the replica, by outcome", [*replica, "outcome"], registry=r
        )
        self.upstream_latency = Histogram(
            "upstream_response_seconds", "Time to the replica's response headers", replica, buckets=_LATENCY, registry=r
        )
        self._batch_sizes: dict[str, int] = {}
        self._lock = threading.Lock()
        self._initialise(default_model, queue_capacity)

    def _initialise(self, default_model: tuple[str, str] | None, queue_capacity: int | None) -> None:
        """Series exist (at 0) before the first event, so rates and alerts have something to read."""
        for reason in REJECT_REASONS:
            self.requests_rejected.labels(reason)
        for reason in CANCEL_REASONS:
            self.requests_cancelled.labels(reason)
        for code in ErrorCode:
            self.error_responses.labels(code.value)
        if queue_capacity is not None:
            self.queue_capacity.set(queue_capacity)
        if default_model is not None:
            model, version = default_model
            counters = (self.tokens_generated, self.prompt_tokens, self.cache_hits, self.cache_misses)
            for counter in (*counters, self.response_cache_hits, self.response_cache_misses):
                counter.labels(model, version)
            self.model_load_failures.labels(model, version)
            for domain in DOMAINS:
                self.successful_inferences.labels(model, version, domain)
            for code in ENGINE_FAILURES:
                self.failed_inferences.labels(model, version, code.value)

    # --- upstream replicas --------------------------------------------------------------------------

    def upstream_replica(self, model: str, replica: str, *, healthy: bool, in_flight: int) -> None:
        self.upstream_healthy.labels(model, replica).set(1 if healthy else 0)
        self.upstream_in_flight.labels(model, replica).set(in_flight)

    def upstream_request(self, model: str, replica: str, outcome: str, seconds: float | None = None) -> None:
        """`outcome`: "ok", "retried" (failed before its first byte, sent again elsewhere), "error" or "cancelled"."""
        self.upstream_requests.labels(model, replica, outcome).inc()
        if seconds is not None:
            self.upstream_latency.labels(model, replica).observe(seconds)

    # --- HTTP -------------------------------------------------------------------------------------

    def http_request(
        self,
        endpoint: str,
        status: int,
        model: str,
        version: str,
        seconds: float,
        request_bytes: int,
        response_bytes: int,
    ) -> None:
        self.api_requests.labels(endpoint, str(status), model, version).inc()
        self.api_response_time.labels(endpoint, model, version).observe(seconds)
        self.api_request_size.labels(endpoint).observe(request_bytes)
        self.api_response_size.labels(endpoint).observe(response_bytes)

    def error_response(self, code: ErrorCode) -> None:
        self.error_responses.labels(code.value).inc()

    # --- admission (also for rate limits and token quotas) ---------------------------------------

    def request_rejected(self, reason: str) -> None:
        """One request refused before any work: queue_full, shutting_down, memory, rate_limited or quota."""
        self.requests_rejected.labels(reason).inc()

    def rate_limited(self, caller: str) -> None:
        """`caller` is `key:<name>` or `addr:<client>`; addresses are one `anonymous` label (bounded values)."""
        self.request_rejected("rate_limited")
        key = caller.removeprefix("key:") if caller.startswith("key:") else "anonymous"
        self.key_rejections.labels(key, "rate_limited").inc()

    def quota_exceeded(self, key: str) -> None:
        self.request_rejected("quota")
        self.key_rejections.labels(key, "quota").inc()

    def key_charged(self, key: str, tokens: int) -> None:
        self.key_tokens.labels(key).inc(tokens)

    def request_cancelled(self, reason: str) -> None:
        self.requests_cancelled.labels(reason).inc()

    # --- the engine --------------------------------------------------------------------------------

    def queued(self, depth: int) -> None:
        self.queue_depth.set(depth)

    def batch(self, worker: str, size: int) -> None:
        with self._lock:
            self._batch_sizes[worker] = size
            self.batch_size.set(sum(self._batch_sizes.values()))

    def generation_started(self, model: str, version: str, queue_seconds: float) -> None:
        self.request_queue_time.labels(model, version).observe(queue_seconds)

    def first_token(self, model: str, version: str, seconds: float) -> None:
        self.time_to_first_token.labels(model, version).observe(seconds)

    def token_gap(self, model: str, version: str, seconds: float, tokens: int = 1) -> None:
        child = self.inter_token_latency.labels(model, version)
        for _ in range(tokens):
            child.observe(seconds)

    def generation_completed(
        self, model: str, version: str, domain: str, prompt_tokens: int, tokens: int, seconds: float
    ) -> None:
        self.tokens_generated.labels(model, version).inc(tokens)
        self.prompt_tokens.labels(model, version).inc(prompt_tokens)
        self.token_generation_time.labels(model, version).observe(seconds)
        self.successful_inferences.labels(model, version, domain).inc()

    def generation_failed(self, model: str, version: str, code: ErrorCode) -> None:
        self.failed_inferences.labels(model, version, code.value).inc()
        if code is ErrorCode.TIMEOUT:
            self.request_cancelled("timeout")

    # --- the model cache ---------------------------------------------------------------------------

    def cache_hit(self, model: str, version: str) -> None:
        self.cache_hits.labels(model, version).inc()

    def cache_miss(self, model: str, version: str) -> None:
        self.cache_misses.labels(model, version).inc()

    def response_cache_hit(self, model: str, version: str) -> None:
        self.response_cache_hits.labels(model, version).inc()

    def response_cache_miss(self, model: str, version: str) -> None:
        self.response_cache_misses.labels(model, version).inc()

    def response_cache_size(self, size_bytes: int) -> None:
        self.response_cache_bytes.set(size_bytes)

    def model_loaded(self, model: str, version: str, seconds: float, memory_bytes: int) -> None:
        self.model_load_time.labels(model, version).observe(seconds)
        self.model_memory.labels(model, version).set(memory_bytes)

    def model_load_failed(self, model: str, version: str) -> None:
        self.model_load_failures.labels(model, version).inc()

    def model_unloaded(self, model: str, version: str) -> None:
        # Labels cannot be removed in multiprocess mode; a zero says the same.
        self.model_memory.labels(model, version).set(0)

    # --- stores and devices ------------------------------------------------------------------------

    def sessions(self, count: int) -> None:
        self.active_sessions.set(count)

    def chunks(self, count: int) -> None:
        self.vector_store_chunks.set(count)

    def device_memory(self, device: str, allocated: int, reserved: int, total: int, pressure: int) -> None:
        self.device_allocated.labels(device).set(allocated)
        self.device_reserved.labels(device).set(reserved)
        self.device_total.labels(device).set(total)
        self.device_pressure.labels(device).set(pressure)

    # --- export ------------------------------------------------------------------------------------

    def export_registry(self) -> CollectorRegistry:
        """This app's registry, or in multiprocess mode one that merges every process's files."""
        folder = multiprocess_dir()
        if folder is None:
            return self.registry
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=folder)  # type: ignore[no-untyped-call]
        return merged

    def exposition(self) -> bytes:
        return generate_latest(self.export_registry())

    def error_counts(self) -> dict[str, int]:
        """error_responses_total by code, read back from the export (so every process's, when several)."""
        return {code: int(value) for code, value in _samples(self.export_registry(), "error_responses_total", "code")}

    def close(self) -> None:
        """A process leaving: its live gauges stop counting in the merged export."""
        if multiprocess_dir() is not None:
            mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def _samples(registry: CollectorRegistry, name: str, label: str) -> Iterable[tuple[str, float]]:
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name:
                yield sample.labels[label], sample.value
