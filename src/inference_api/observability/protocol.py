"""Body of GET /stats/errors."""

from __future__ import annotations

from pydantic import BaseModel


class ErrorStats(BaseModel):
    since: float
    total: int
    errors: dict[str, int]
