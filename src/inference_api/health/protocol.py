"""Bodies of the health, readiness and status routes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Health(BaseModel):
    status: str
    timestamp: float


class Readiness(BaseModel):
    status: str
    model: str
    timestamp: float


class CachedModelInfo(BaseModel):
    base_model: str
    version: str
    loaded: bool


class Status(BaseModel):
    service: str
    version: str
    status: str
    timestamp: float
    uptime_seconds: float
    prometheus_available: bool
    cached_models: int
    device: str
    cached_model_info: list[CachedModelInfo]
    queue: dict[str, Any]
    workers: list[dict[str, Any]]
    memory: dict[str, Any]
    maintenance: list[dict[str, Any]]
    sessions: int
    backends: dict[str, str | None] = Field(description="Where sessions and vectors live; URL credentials as ***.")
