"""Tiny accessors from a request to the services the lifespan built, and their Annotated aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from inference_api.chat.store import SessionStore
from inference_api.engine.service import Engine
from inference_api.grounding import Grounding
from inference_api.modeling.registry import ModelRegistry
from inference_api.observability.metrics import Metrics
from inference_api.services import LazyDocuments, Services
from inference_api.settings import Settings


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def get_settings(request: Request) -> Settings:
    return get_services(request).settings


def get_engine(request: Request) -> Engine:
    return get_services(request).engine


def get_registry(request: Request) -> ModelRegistry:
    return get_services(request).registry


def get_sessions(request: Request) -> SessionStore:
    return get_services(request).sessions


def get_documents(request: Request) -> LazyDocuments:
    return get_services(request).documents


def get_grounding(request: Request) -> Grounding:
    return get_services(request).grounding


def get_metrics(request: Request) -> Metrics:
    return get_services(request).metrics


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
SessionsDep = Annotated[SessionStore, Depends(get_sessions)]
DocumentsDep = Annotated[LazyDocuments, Depends(get_documents)]
GroundingDep = Annotated[Grounding, Depends(get_grounding)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
