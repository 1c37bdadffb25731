"""The app's state as the lifespan built it, read by each feature's dependencies.

The composition root puts one object on `app.state.services`. A feature's `deps.py` reads the attributes it
needs through a Protocol of its own (`ChatState`, `DocumentsState`, ...), so no feature imports the root, and the
root has mypy check that what it builds satisfies every one of those Protocols.
"""

from __future__ import annotations

from typing import Annotated, Any, Protocol, cast

from fastapi import Depends, Request

from inference_api.settings import Settings


def app_state(request: Request) -> Any:
    """What the lifespan built; a feature casts it to its own Protocol to read it typed."""
    return request.app.state.services


class SettingsState(Protocol):
    settings: Settings


def get_settings(request: Request) -> Settings:
    return cast(SettingsState, app_state(request)).settings


SettingsDep = Annotated[Settings, Depends(get_settings)]
