"""Dependencies of the health and status routes."""

from __future__ import annotations

from typing import Annotated, Protocol, cast

from fastapi import Depends, Request

from inference_api.api.state import app_state
from inference_api.maintenance import Maintenance


class HealthState(Protocol):
    maintenance: Maintenance


def get_maintenance(request: Request) -> Maintenance:
    return cast(HealthState, app_state(request)).maintenance


MaintenanceDep = Annotated[Maintenance, Depends(get_maintenance)]
