"""Dependencies of the routes that generate (and of those that look at the engine)."""

from __future__ import annotations

from typing import Annotated, Protocol, cast

from fastapi import Depends, Request

from inference_api.api.state import app_state
from inference_api.documents.grounding import Grounding
from inference_api.engine.service import Engine
from inference_api.generation.cache import ResponseCache
from inference_api.generation.pipeline import GenerationPipeline


class GenerationState(Protocol):
    engine: Engine
    grounding: Grounding
    response_cache: ResponseCache


def get_engine(request: Request) -> Engine:
    return cast(GenerationState, app_state(request)).engine


def get_pipeline(request: Request) -> GenerationPipeline:
    state = cast(GenerationState, app_state(request))
    return GenerationPipeline(state.engine, state.grounding, state.response_cache)


EngineDep = Annotated[Engine, Depends(get_engine)]
PipelineDep = Annotated[GenerationPipeline, Depends(get_pipeline)]
