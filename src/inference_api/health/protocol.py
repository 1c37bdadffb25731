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
    degraded: list[str] = Field(
        default_factory=list, description="Dependencies that are down; the routes that need them answer 503."
    )
    dependencies: dict[str, str] = Field(default_factory=dict, description="Each external dependency: up or down.")


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
    sessions: int | None = Field(description="Sessions stored; null while the session store cannot be reached.")
    degraded: list[str] = Field(default_factory=list, description="Dependencies that are down.")
    dependencies: dict[str, dict[str, Any]] = Field(default_factory=dict)
    backends: dict[str, str | None] = Field(description="Where sessions and vectors live; URL credentials as ***.")
    upstreams: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Models served by an upstream fleet: each replica's health, requests in flight, errors, latency.",
    )
