"""Route guards: `Depends(require_scope("infer"))` authenticates the caller and checks one scope."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request

from inference_api.api.deps import ServicesDep
from inference_api.auth.keys import Principal
from inference_api.errors import ErrorCode, ServiceError
from inference_api.settings import Scope


def presented_credential(request: Request, header: str) -> str | None:
    value = request.headers.get(header)
    if value:
        return value.strip()
    authorization = request.headers.get("authorization", "")
    scheme, _, credential = authorization.partition(" ")
    if scheme.lower() == "bearer" and credential.strip():
        return credential.strip()
    return None


async def authenticate(request: Request, services: ServicesDep) -> Principal:
    header = services.settings.api_key_header
    credential = presented_credential(request, header)
    if credential is None:
        raise ServiceError(
            ErrorCode.UNAUTHORIZED, f"missing credentials: send the {header} header or Authorization: Bearer"
        )
    principal = services.keys.authenticate(credential)
    if principal is None:
        raise ServiceError(ErrorCode.UNAUTHORIZED, "invalid API key")
    request.state.principal = principal
    return principal


def require_scope(scope: Scope) -> Callable[..., Awaitable[Principal]]:
    async def guard(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if scope not in principal.scopes:
            raise ServiceError(ErrorCode.FORBIDDEN, f"the key {principal.name!r} lacks the {scope!r} scope")
        return principal

    return guard


CallerDep = Annotated[Principal, Depends(authenticate)]
InferCallerDep = Annotated[Principal, Depends(require_scope("infer"))]
AdminCallerDep = Annotated[Principal, Depends(require_scope("admin"))]
ChatCallerDep = Annotated[Principal, Depends(require_scope("chat"))]
DocumentsCallerDep = Annotated[Principal, Depends(require_scope("documents"))]
