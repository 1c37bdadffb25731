"""The services the app is made of, built once at start-up by the lifespan and torn down after it."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from inference_api.auth.keys import ApiKeyStore, build_key_store
from inference_api.auth.service import Authenticator
from inference_api.auth.tokens import build_token_service
from inference_api.chat.store import SessionStore, open_session_store
from inference_api.documents.recovery import sweep_at_start
from inference_api.documents.sandbox import ParseLimits
from inference_api.documents.service import DEFAULT_ORPHAN_GRACE_SECONDS, DocumentService
from inference_api.documents.types import SearchHit
from inference_api.engine.service import Engine
from inference_api.grounding import Grounding
from inference_api.health.dependencies import DependencyMonitor
from inference_api.maintenance import Maintenance
from inference_api.modeling import builtin
from inference_api.modeling.conversion import is_prepared
from inference_api.modeling.loader import resolve_precision, worker_devices
from inference_api.modeling.prompt import PromptEncoder
from inference_api.modeling.registry import ModelRef, ModelRegistry
from inference_api.observability.memory import MemoryMonitor, read_device_memory, retry_after
from inference_api.observability.metrics import Metrics
from inference_api.quotas.service import TokenQuotas
from inference_api.ratelimit.service import RateLimiter
from inference_api.settings import Settings, SettingsError
from inference_api.torch_threads import in_passing_thread

logger = logging.getLogger(__name__)


class LazyDocuments:
    """The document service, built on first use: loading the embedding model takes seconds, and a
    server that never sees an upload should not pay for it at start-up."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._service: DocumentService | None = None
        self._lock = asyncio.Lock()

    @property
    def loaded(self) -> DocumentService | None:
        return self._service

    async def get(self) -> DocumentService:
        async with self._lock:
            if self._service is None:
                settings = self._settings
                self._service = await in_passing_thread(
                    DocumentService.build,
                    data_dir=settings.data_dir / "chroma",
                    device=settings.device,
                    chroma_url=settings.chroma_url,
                    max_upload_bytes=int(settings.max_upload_mb * 1024 * 1024),
                    parse_limits=ParseLimits(settings.parse_timeout, settings.parse_memory_mb * 1024 * 1024),
                )
            return self._service

    async def search(self, owner: str, query: str, k: int = 5) -> list[SearchHit]:
        return await (await self.get()).search(owner, query, k)

    def close(self) -> None:
        if self._service is not None:
            self._service.close()


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
    dependencies: DependencyMonitor


def check_configuration(settings: Settings) -> tuple[ApiKeyStore, ModelRegistry]:
    """Everything that can be refused before serving: keys, the registry, the default model's source."""
    keys = build_key_store(settings)
    if settings.model_registry is not None and not settings.model_registry.is_file():
        raise SettingsError(f"MODEL_REGISTRY: {settings.model_registry} does not exist")
    try:
        registry = ModelRegistry.from_file(
            settings.registry_path, ModelRef(settings.default_model, settings.default_version)
        )
        for device in worker_devices(settings.device):
            resolve_precision(settings.dtype, device)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    except Exception as exc:  # ServiceError for an unknown default model or version
        raise SettingsError(f"DEFAULT_MODEL / DEFAULT_VERSION: {exc}") from None
    default_spec = registry.get(registry.default.base)
    if default_spec.source.kind == "builtin" and not is_prepared(builtin.builtin_folder(settings.data_dir)):
        try:
            builtin.find_builtin_gguf()
        except Exception as exc:
            raise SettingsError(str(exc)) from None
    return keys, registry


async def build_services(settings: Settings, metrics: Metrics | None = None) -> Services:
    keys, registry = check_configuration(settings)
    metrics = metrics or Metrics(
        default_model=(registry.default.base, registry.default.version), queue_capacity=settings.max_queue
    )
    auth = Authenticator(keys, build_token_service(settings, keys))
    encoder = PromptEncoder(registry, settings.data_dir)
    engine = Engine.build(settings, registry, encoder, metrics)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    sessions = await open_session_store(settings.data_dir, settings.redis_url)
    documents = LazyDocuments(settings)
    grounding = Grounding(documents, k=settings.rag_top_k, min_score=settings.rag_min_score)
    maintenance = Maintenance()
    schedule_jobs(maintenance, settings, sessions, documents)
    memory = watch_memory(maintenance, settings, engine, metrics)
    quotas = TokenQuotas.build(settings, keys)
    engine.budget = quotas
    quotas.on_reject.append(metrics.quota_exceeded)
    quotas.on_settle.append(metrics.key_charged)
    rate_limits = RateLimiter(settings, keys)
    rate_limits.on_reject.append(metrics.rate_limited)
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
        result = await asyncio.to_thread(
            sweep_at_start,
            data_dir=settings.data_dir / "chroma",
            chroma_url=settings.chroma_url,
            process_started=started,
            grace_seconds=DEFAULT_ORPHAN_GRACE_SECONDS,
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
