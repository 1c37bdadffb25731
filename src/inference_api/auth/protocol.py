"""Bodies of POST /auth/token."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from inference_api.settings import Scope


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scopes: list[Scope] | None = Field(
        default=None, description="A subset of the key's scopes for the token (default: all of them)."
    )


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the token expires.")
    scopes: list[str]
