"""Dependencies of the health and status routes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Protocol, cast

from fastapi import Depends, Request

from inference_api.api.state import app_state
from inference_api.chat.store import SessionStore
from inference_api.health.dependencies import DependencyMonitor, DependencyState
from inference_api.maintenance import Maintenance
from inference_api.quotas.service import TokenQuotas


class HealthState(Protocol):
    maintenance: Maintenance
    dependencies: DependencyMonitor
    sessions: SessionStore
    quotas: TokenQuotas


def get_maintenance(request: Request) -> Maintenance:
    return cast(HealthState, app_state(request)).maintenance


MaintenanceDep = Annotated[Maintenance, Depends(get_maintenance)]


def get_dependencies(request: Request) -> Callable[[], Awaitable[dict[str, DependencyState]]]:
    """Checks the shared dependencies (cached briefly); one a store saw fail since is checked again at once."""
    state = cast(HealthState, app_state(request))

    async def check() -> dict[str, DependencyState]:
        sessions_failing = getattr(state.sessions, "available", True) is False
        suspect = ["redis"] if sessions_failing or state.quotas.degraded else []
        return await state.dependencies.check(suspect=suspect)

    return check


DependenciesDep = Annotated[Callable[[], Awaitable[dict[str, DependencyState]]], Depends(get_dependencies)]
