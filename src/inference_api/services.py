"""The services the app is made of: opened once by the lifespan, each closed by it in the reverse order.

`Services` is the app's typed state. Each feature reads it through a Protocol of its own (`chat.deps.ChatState`,
...) and never imports this module; `_serves_every_feature` has mypy check that it satisfies them all.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import ValidationError

from inference_api.api.state import SettingsState
from inference_api.auth.deps import AuthState
from inference_api.auth.keys import ApiKeyStore, build_key_store
from inference_api.auth.service import Authenticator
from inference_api.auth.tokens import build_token_service
from inference_api.chat.deps import ChatState
from inference_api.chat.store import SessionStore, open_session_store
from inference_api.documents.deps import DocumentsState
from inference_api.documents.grounding import Grounding
from inference_api.documents.lazy import LazyDocuments
from inference_api.documents.recovery import sweep_at_start
from inference_api.documents.service import DEFAULT_ORPHAN_GRACE_SECONDS
from inference_api.engine.service import Engine
from inference_api.generation.cache import ResponseCache
from inference_api.generation.deps import GenerationState
from inference_api.health.dependencies import DependencyMonitor
from inference_api.health.deps import HealthState
from inference_api.maintenance import Maintenance
from inference_api.modeling import builtin
from inference_api.modeling.conversion import is_prepared
from inference_api.modeling.loader import resolve_precision, worker_devices
from inference_api.modeling.prompt import PromptEncoder
from inference_api.modeling.registry import ModelRef, ModelRegistry, UpstreamSpec
from inference_api.observability.deps import ObservabilityState
from inference_api.observability.memory import MemoryMonitor, read_device_memory, retry_after
from inference_api.observability.metrics import Metrics
from inference_api.quotas.deps import QuotasState
from inference_api.quotas.service import TokenQuotas
from inference_api.ratelimit.deps import RateLimitState
from inference_api.ratelimit.service import RateLimiter
from inference_api.settings import Settings, SettingsError
from inference_api.upstream.backend import UpstreamBackend

logger = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    keys: ApiKeyStore
    registry: ModelRegistry
    encoder: PromptEncoder
    engine: Engine
    sessions: SessionStore
    documents: LazyDocuments
    grounding: Grounding
    maintenance: Maintenance
    metrics: Metrics
    memory: MemoryMonitor
    auth: Authenticator
    rate_limits: RateLimiter
    quotas: TokenQuotas
    response_cache: ResponseCache
    dependencies: DependencyMonitor

    async def refresh_store_gauges(self) -> None:
        """Sessions and chunks are counted in their stores when scraped; a store that cannot answer skips its gauge."""
        try:
            self.metrics.sessions(await self.sessions.count())
        except Exception:
            logger.warning("counting sessions for the metrics failed", exc_info=True)
        documents = self.documents.loaded  # not built yet: nothing stored worth loading it for
        if documents is not None:
            try:
                self.metrics.chunks(await documents.chunk_count())
            except Exception:
                logger.warning("counting document chunks for the metrics failed", exc_info=True)


def _serves_every_feature(services: Services) -> tuple[object, ...]:
    """Never called: mypy checks here that the app's state satisfies what each feature's dependencies read."""
    features: tuple[
        SettingsState,
        AuthState,
        RateLimitState,
        QuotasState,
        GenerationState,
        ChatState,
        DocumentsState,
        HealthState,
        ObservabilityState,
    ] = (services,) * 9
    return features


def check_configuration(settings: Settings) -> tuple[ApiKeyStore, ModelRegistry]:
    """Everything that can be refused before serving: keys, the registry, the default model's source."""
    keys = build_key_store(settings)
    if settings.model_registry is not None and not settings.model_registry.is_file():
        raise SettingsError(f"MODEL_REGISTRY: {settings.model_registry} does not exist")
    try:
        registry = ModelRegistry.from_file(
            settings.registry_path,
            ModelRef(settings.default_model, settings.default_version),
            upstream=default_upstream(settings),
        )
        for device in worker_devices(settings.device):
            resolve_precision(settings.dtype, device)
    except (ValueError, ValidationError) as exc:
        raise SettingsError(str(exc)) from None
    except Exception as exc:  # ServiceError for an unknown default model or version
        raise SettingsError(f"DEFAULT_MODEL / DEFAULT_VERSION: {exc}") from None
    for spec in registry.specs():
        # A key the operator meant to send and did not set would only show as the upstream's 401s.
        variable = spec.upstream.api_key_env if spec.upstream is not None else None
        if variable is not None and not os.environ.get(variable):
            raise SettingsError(
                f"MODEL_REGISTRY: model {spec.name!r} takes its upstream key from {variable}, which is not set"
            )
    default_spec = registry.get(registry.default.base)
    if default_spec.source.kind == "builtin" and not is_prepared(builtin.builtin_folder(settings.data_dir)):
        try:
            builtin.find_builtin_gguf()
        except Exception as exc:
            raise SettingsError(str(exc)) from None
    return keys, registry


def default_upstream(settings: Settings) -> UpstreamSpec | None:
    """BACKEND=openai: the default model served by the fleet at UPSTREAM_URL, by the name UPSTREAM_MODEL."""
    if settings.backend != "openai":
        return None
    try:
        return UpstreamSpec(
            urls=settings.upstream_urls,
            model=settings.upstream_model or settings.default_model,
            max_in_flight=settings.upstream_max_in_flight,
            tokenizer=settings.upstream_tokenizer,
        )
    except ValidationError as exc:
        raise SettingsError(f"UPSTREAM_URL / UPSTREAM_MODEL: {exc.errors()[0]['msg']}") from None


async def open_services(settings: Settings, metrics: Metrics, stack: AsyncExitStack, *, warm_up: bool) -> Services:
    """Open every service, each registered on `stack` as it opens: closing the stack tears down in the reverse
    order (maintenance stops, the engine drains, then the stores close), and a start that fails half-way closes
    just what it had opened."""
    keys, registry = check_configuration(settings)
    stack.callback(metrics.close)
    auth = Authenticator(keys, build_token_service(settings, keys))
    encoder = PromptEncoder(registry, settings.data_dir)
    documents = LazyDocuments(settings)
    stack.callback(documents.close)
    quotas = TokenQuotas.build(settings, keys)
    stack.push_async_callback(quotas.close)
    quotas.on_reject.append(metrics.quota_exceeded)
    quotas.on_settle.append(metrics.key_charged)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    sessions = await open_session_store(settings.data_dir, settings.redis_url)
    stack.push_async_callback(sessions.close)
    engine = Engine.build(settings, registry, encoder, metrics)
    engine.budget = quotas
    if any(spec.upstream is not None for spec in registry.specs()):
        upstream = UpstreamBackend(registry, settings, metrics)
        stack.push_async_callback(upstream.close)  # after the engine has drained (the stack closes in reverse)
        await upstream.start()
        engine.upstream = upstream
    grounding = Grounding(
        documents,
        k=settings.rag_top_k,
        min_score=settings.rag_min_score,
        max_sources=settings.rag_max_sources,
        refuse_ungrounded=settings.rag_ungrounded == "refuse",
        layout=settings.rag_prompt,
    )
    response_cache = ResponseCache(int(settings.response_cache_mb * 1024 * 1024), metrics)
    engine.on_model_change.append(response_cache.forget_model)
    documents.on_change.append(response_cache.forget_owner)
    maintenance = Maintenance()
    schedule_jobs(maintenance, settings, sessions, documents)
    memory = watch_memory(maintenance, settings, engine, metrics)
    rate_limits = RateLimiter(settings, keys)
    rate_limits.on_reject.append(metrics.rate_limited)
    await engine.start(warm_up=warm_up)
    stack.push_async_callback(engine.stop, drain_timeout=settings.drain_timeout)
    maintenance.start()
    stack.push_async_callback(maintenance.stop)
    return Services(
        settings=settings,
        keys=keys,
        registry=registry,
        encoder=encoder,
        engine=engine,
        sessions=sessions,
        documents=documents,
        grounding=grounding,
        maintenance=maintenance,
        metrics=metrics,
        memory=memory,
        auth=auth,
        rate_limits=rate_limits,
        quotas=quotas,
        response_cache=response_cache,
        dependencies=DependencyMonitor(settings),
    )


def schedule_jobs(
    maintenance: Maintenance, settings: Settings, sessions: SessionStore, documents: LazyDocuments
) -> None:
    interval = settings.maintenance_interval

    async def expire_sessions() -> dict[str, Any]:
        return {"expired": await sessions.expire(settings.session_ttl), "remaining": await sessions.count()}

    async def deduplicate_chunks() -> dict[str, Any] | None:
        service = documents.loaded  # a store nobody has used yet has nothing to clean
        return asdict(await service.remove_duplicate_chunks()) if service else None

    async def check_vectors() -> dict[str, Any] | None:
        service = documents.loaded
        if service is None:
            return None
        report = await service.check_integrity(repair=True)
        return {**asdict(report), "ok": report.ok}

    started = time.time()
    swept = False

    async def sweep_orphans_at_start() -> dict[str, Any] | None:
        # Chunks a crash left without their document's record (documents/recovery.py); once, at start-up.
        nonlocal swept
        if swept:
            return None
        result = await documents.run_on_store(
            lambda store: sweep_at_start(
                data_dir=settings.data_dir / "chroma",
                chroma_url=settings.chroma_url,
                process_started=started,
                grace_seconds=DEFAULT_ORPHAN_GRACE_SECONDS,
                store=store,
            )
        )
        swept = True
        return result

    maintenance.add("vector-orphans-at-start", interval, sweep_orphans_at_start, at_start=True)
    maintenance.add("session-expiry", interval, expire_sessions)
    maintenance.add("vector-duplicates", interval, deduplicate_chunks)
    maintenance.add("vector-integrity", interval, check_vectors)


def watch_memory(maintenance: Maintenance, settings: Settings, engine: Engine, metrics: Metrics) -> MemoryMonitor:
    """The device memory check: a maintenance job every MEMORY_CHECK_INTERVAL, and once now so the gauges exist."""
    devices = [worker.device for worker in engine.workers]
    wait = retry_after(settings.memory_check_interval)
    monitor = MemoryMonitor(
        lambda: read_device_memory(devices),
        warning=settings.memory_warning,
        critical=settings.memory_critical,
        metrics=metrics,
        on_critical=lambda critical: engine.refuse_for_memory(wait if critical else None),
    )
    monitor.check()

    async def check_memory() -> dict[str, Any]:
        return monitor.check()

    maintenance.add("device-memory", settings.memory_check_interval, check_memory, log_level=logging.DEBUG)
    return monitor
