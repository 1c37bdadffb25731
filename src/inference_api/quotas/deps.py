"""Dependencies of the usage route."""

from __future__ import annotations

from typing import Annotated, Protocol, cast

from fastapi import Depends, Request

from inference_api.api.state import app_state
from inference_api.quotas.service import TokenQuotas


class QuotasState(Protocol):
    quotas: TokenQuotas


def get_quotas(request: Request) -> TokenQuotas:
    return cast(QuotasState, app_state(request)).quotas


QuotasDep = Annotated[TokenQuotas, Depends(get_quotas)]
