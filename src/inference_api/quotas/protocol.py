"""The body of GET /usage."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class TokenWindowUsage(BaseModel):
    used: int = Field(description="Tokens generated in this window (settled requests).")
    reserved: int = Field(description="max_new_tokens of this key's requests still running.")
    limit: int | None = Field(description="Tokens allowed in this window; null: no quota.")
    remaining: int | None
    resets_at: datetime
    resets_in: int = Field(description="Seconds until the window resets.")


class TokenUsage(BaseModel):
    minute: TokenWindowUsage
    day: TokenWindowUsage


class RequestLimitUsage(BaseModel):
    limit: str = Field(description="The limit in `limits` notation, e.g. '60 per 1 minute'.")
    applies_to: Literal["all routes", "generation routes"]
    remaining: int
    resets_in: int


class UsageResponse(BaseModel):
    key: str
    tokens: TokenUsage
    requests: list[RequestLimitUsage]
