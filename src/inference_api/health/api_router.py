"""GET /health (liveness), GET /ready (readiness), GET /status."""

from __future__ import annotations

import time
from typing import Any

import psutil
import torch
from fastapi import APIRouter

from inference_api import __version__
from inference_api.api.state import SettingsDep
from inference_api.auth.deps import CallerDep
from inference_api.chat.deps import SessionsDep
from inference_api.chat.store import SessionStore
from inference_api.errors import ErrorCode, ServiceError
from inference_api.generation.deps import EngineDep
from inference_api.health.deps import DependenciesDep, MaintenanceDep
from inference_api.health.protocol import CachedModelInfo, Health, Readiness, Status
from inference_api.modeling.registry import ModelRef
from inference_api.observability.memory import read_device_memory
from inference_api.redaction import redact_url
from inference_api.settings import Settings

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
async def health() -> Health:
    """Liveness: answers while the process can serve at all."""
    return Health(status="ok", timestamp=time.time())


@router.get("/ready", response_model=Readiness, responses={503: {"description": "Not ready, or draining."}})
async def ready(engine: EngineDep, dependencies: DependenciesDep) -> Readiness:
    """Readiness: 200 once the default model is loaded and warmed, 503 before that and while draining.

    A dependency that is down (Redis, a Chroma server) is listed under `degraded` but keeps the replica
    ready: every replica shares it, and generation without it still works (health/dependencies.py)."""
    if engine.state in ("draining", "stopped"):
        raise ServiceError(ErrorCode.SHUTTING_DOWN, "the server is draining", retry_after=5)
    if not engine.ready:
        raise ServiceError(ErrorCode.MODEL_NOT_READY, f"the default model is {engine.state}", retry_after=5)
    states = await dependencies()
    return Readiness(
        status="degraded" if any(s.up is False for s in states.values()) else "ready",
        model=str(engine.registry.default),
        timestamp=time.time(),
        degraded=[name for name, state in states.items() if state.up is False],
        dependencies={name: "up" if state.up else "down" for name, state in states.items()},
    )


@router.get("/status", response_model=Status)
async def status(
    _: CallerDep,
    engine: EngineDep,
    settings: SettingsDep,
    maintenance: MaintenanceDep,
    sessions: SessionsDep,
    dependencies: DependenciesDep,
) -> Status:
    """Service state: models, queue, workers, memory, dependencies."""
    snapshot = engine.snapshot()
    states = await dependencies()
    loaded = engine.loaded()
    info = [
        CachedModelInfo(
            base_model=spec.name,
            version=version,
            loaded=ModelRef(spec.name, version) in loaded,
        )
        for spec in engine.registry.specs()
        for version in spec.versions
    ]
    return Status(
        service="inference-api",
        version=__version__,
        status=engine.state,
        timestamp=time.time(),
        uptime_seconds=round(time.time() - engine.started_at, 3),
        prometheus_available=settings.prometheus_enabled,
        cached_models=len(loaded),
        device=", ".join(w["device"] for w in snapshot["workers"]),
        cached_model_info=info,
        queue=snapshot["queue"],
        workers=snapshot["workers"],
        upstreams=snapshot["upstreams"],
        memory=memory_report(),
        maintenance=maintenance.report(),
        sessions=await _session_count(sessions),
        backends=backends(settings),
        degraded=[name for name, state in states.items() if state.up is False],
        dependencies={name: state.view() for name, state in states.items()},
    )


async def _session_count(sessions: SessionStore) -> int | None:
    """The number of sessions, or None when the store cannot say (a Redis outage is shown, not a 500)."""
    try:
        return await sessions.count()
    except ServiceError:
        return None


def backends(settings: Settings) -> dict[str, str | None]:
    """The stores in use, their URLs with any password masked: /status is readable by every key."""
    return {
        "sessions": "redis" if settings.redis_url else "sqlite",
        "redis_url": redact_url(settings.redis_url),
        "vectors": "chroma-server" if settings.chroma_url else "chroma-local",
        "chroma_url": redact_url(settings.chroma_url),
    }


def memory_report() -> dict[str, Any]:
    report: dict[str, Any] = {"process_rss_bytes": psutil.Process().memory_info().rss}
    vm = psutil.virtual_memory()
    report["system_total_bytes"] = vm.total
    report["system_available_bytes"] = vm.available
    if torch.cuda.is_available():
        devices = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
        report["cuda"] = [
            {
                "device": reading.device,
                "allocated_bytes": reading.allocated,
                "reserved_bytes": reading.reserved,
                "total_bytes": reading.total,
            }
            for reading in read_device_memory(devices)
        ]
    return report
