"""Tiny accessors from a request to the services the lifespan built, and their Annotated aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from inference_api.engine.service import Engine
from inference_api.modeling.registry import ModelRegistry
from inference_api.services import Services
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


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
