"""POST /auth/token."""

from __future__ import annotations

from fastapi import APIRouter

from inference_api.auth.deps import AuthenticatorDep, CallerDep
from inference_api.auth.protocol import TokenRequest, TokenResponse
from inference_api.errors import ErrorCode, ServiceError

router = APIRouter(tags=["auth"])


@router.post("/auth/token", response_model=TokenResponse)
async def issue_token(caller: CallerDep, auth: AuthenticatorDep, body: TokenRequest | None = None) -> TokenResponse:
    """Exchange an API key for a short-lived JWT carrying the key's scopes (or the subset asked for)."""
    if caller.credential != "api_key":
        # A token minting tokens would outlive its own expiry; only the key itself can ask.
        raise ServiceError(ErrorCode.FORBIDDEN, "POST /auth/token takes an API key, not a token")
    scopes = caller.scopes
    if body is not None and body.scopes is not None:
        extra = sorted(set(body.scopes) - caller.scopes)
        if extra:
            raise ServiceError(ErrorCode.FORBIDDEN, f"the key {caller.name!r} lacks the scopes {extra}")
        scopes = frozenset(body.scopes)
    issued = auth.tokens.issue(caller, scopes)
    return TokenResponse(access_token=issued.token, expires_in=issued.expires_in, scopes=issued.scopes)
