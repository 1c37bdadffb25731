"""Who a credential belongs to: an API key, or a JWT issued for one."""

from __future__ import annotations

from inference_api.auth.keys import ApiKeyStore, Principal
from inference_api.auth.tokens import TokenService, looks_like_jwt
from inference_api.errors import ErrorCode, ServiceError


class Authenticator:
    def __init__(self, keys: ApiKeyStore, tokens: TokenService) -> None:
        self.keys = keys
        self.tokens = tokens

    def authenticate(self, credential: str) -> Principal:
        """The caller behind `credential`, or UNAUTHORIZED saying why not (never echoing the credential)."""
        principal = self.keys.authenticate(credential)
        if principal is not None:
            return principal
        if looks_like_jwt(credential):
            return self.tokens.verify(credential)
        raise ServiceError(ErrorCode.UNAUTHORIZED, "invalid API key")
