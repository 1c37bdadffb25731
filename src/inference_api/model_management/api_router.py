"""GET /models, POST /models/{name}/load, POST /models/{name}/unload."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Body

from inference_api.auth.deps import AdminCallerDep, CallerDep
from inference_api.generation.deps import EngineDep
from inference_api.model_management.protocol import LoadRequest, LoadResult, ModelInfo, ModelList, UnloadResult

router = APIRouter(prefix="/models", tags=["models"])


@router.get("", response_model=ModelList)
async def list_models(_: CallerDep, engine: EngineDep) -> ModelList:
    """List the registered base models, their versions and which are loaded."""
    loaded = engine.loaded()
    return ModelList(
        models=[
            ModelInfo(
                base_model=spec.name,
                versions=spec.versions,
                description=spec.description,
                loaded=any(ref.base == spec.name for ref in loaded),
                loaded_versions=sorted(ref.version for ref in loaded if ref.base == spec.name),
            )
            for spec in engine.registry.specs()
        ]
    )


@router.post("/{name}/load", response_model=LoadResult)
async def load_model(
    name: str, _: AdminCallerDep, engine: EngineDep, body: Annotated[LoadRequest | None, Body()] = None
) -> LoadResult:
    """Load a model version into the cache (admin)."""
    ref = engine.registry.ref(name, body.version if body else None)
    started = time.perf_counter()
    await engine.load_model(ref)
    return LoadResult(
        base_model=ref.base,
        version=ref.version,
        loaded=True,
        load_time=round(time.perf_counter() - started, 3),
    )


@router.post("/{name}/unload", response_model=UnloadResult)
async def unload_model(name: str, _: AdminCallerDep, engine: EngineDep) -> UnloadResult:
    """Drop every cached version of a model (admin); the default model stays."""
    return UnloadResult(base_model=name, unloaded_versions=await engine.unload_model(name))
