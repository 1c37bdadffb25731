"""Route guards: `Depends(require_scope("infer"))` authenticates the caller and checks one scope."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Protocol, cast

from fastapi import Depends, Request

from inference_api.api.state import SettingsDep, app_state
from inference_api.auth.keys import Principal
from inference_api.auth.service import Authenticator
from inference_api.errors import ErrorCode, ServiceError
from inference_api.settings import Scope


class AuthState(Protocol):
    auth: Authenticator


def get_authenticator(request: Request) -> Authenticator:
    return cast(AuthState, app_state(request)).auth


AuthenticatorDep = Annotated[Authenticator, Depends(get_authenticator)]


def presented_credential(request: Request, header: str) -> str | None:
    value = request.headers.get(header)
    if value:
        return value.strip()
    authorization = request.headers.get("authorization", "")
    scheme, _, credential = authorization.partition(" ")
    if scheme.lower() == "bearer" and credential.strip():
        return credential.strip()
    return None


@dataclass(frozen=True)
class Identity:
    """What the request's credential turned out to be: a principal, or the reason it is not one."""

    principal: Principal | None
    refusal: ServiceError | None


async def identify(request: Request, settings: SettingsDep, auth: AuthenticatorDep) -> Identity:
    """Checked once per request (FastAPI caches it): rate limits key on it, and so does `authenticate`."""
    header = settings.api_key_header
    credential = presented_credential(request, header)
    if credential is None:
        missing = f"missing credentials: send the {header} header or Authorization: Bearer"
        return Identity(None, ServiceError(ErrorCode.UNAUTHORIZED, missing))
    try:
        return Identity(auth.authenticate(credential), None)
    except ServiceError as exc:
        return Identity(None, exc)


async def authenticate(request: Request, identity: Annotated[Identity, Depends(identify)]) -> Principal:
    if identity.principal is None:
        assert identity.refusal is not None
        raise identity.refusal
    request.state.principal = identity.principal
    return identity.principal


def require_scope(scope: Scope) -> Callable[..., Awaitable[Principal]]:
    async def guard(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if scope not in principal.scopes:
            who = f"the {'token for' if principal.credential == 'jwt' else 'key'} {principal.name!r}"
            raise ServiceError(ErrorCode.FORBIDDEN, f"{who} lacks the {scope!r} scope")
        return principal

    return guard


IdentityDep = Annotated[Identity, Depends(identify)]
CallerDep = Annotated[Principal, Depends(authenticate)]
InferCallerDep = Annotated[Principal, Depends(require_scope("infer"))]
AdminCallerDep = Annotated[Principal, Depends(require_scope("admin"))]
ChatCallerDep = Annotated[Principal, Depends(require_scope("chat"))]
DocumentsCallerDep = Annotated[Principal, Depends(require_scope("documents"))]
