"""Short-lived JWTs exchanged for an API key (python-jose): HS256 with JWT_SECRET, or RS256 with a key pair.

A token names its key and carries a fingerprint of the key's digest, so it dies with the key: remove the
key from the configuration, or give the name a new key, and every token issued for it is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from jose import jwk, jwt
from jose.exceptions import ExpiredSignatureError, JWTClaimsError, JWTError

from inference_api.auth.keys import ApiKeyStore, Principal
from inference_api.errors import ErrorCode, ServiceError
from inference_api.settings import Settings, SettingsError

logger = logging.getLogger(__name__)

Algorithm = Literal["HS256", "RS256"]
ISSUER = "inference-api"
MIN_SECRET_LENGTH = 32
# Clocks of replicas differ a little; a token is not refused for a skew of this many seconds.
LEEWAY_SECONDS = 5
_REQUIRED = ("exp", "iat", "nbf", "sub", "jti", "iss")


def key_fingerprint(digest: bytes) -> str:
    """What a token carries of its key: a hash of the key's SHA-256, useless for finding the key."""
    return hashlib.sha256(b"inference-api/jwt-binding/" + digest).hexdigest()[:32]


def looks_like_jwt(credential: str) -> bool:
    return credential.count(".") == 2 and credential.startswith("eyJ")


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_in: int
    scopes: list[str]


class TokenService:
    """Issues and verifies tokens. `signing_key` None: this server verifies tokens but cannot issue them."""

    def __init__(
        self,
        keys: ApiKeyStore,
        algorithm: Algorithm,
        signing_key: str | None,
        verifying_key: str | None,
        ttl: int,
        *,
        disabled_reason: str | None = None,
    ) -> None:
        self._keys = keys
        self.algorithm = algorithm
        self._signing_key = signing_key
        self._verifying_key = verifying_key
        self.ttl = ttl
        self.disabled_reason = disabled_reason

    def issue(self, principal: Principal, scopes: frozenset[str]) -> IssuedToken:
        if self._signing_key is None:
            raise ServiceError(ErrorCode.NOT_CONFIGURED, self.disabled_reason or "this server cannot issue tokens")
        found = self._keys.lookup(principal.name)
        if found is None:  # the key authenticated a moment ago; only a reload could remove it
            raise ServiceError(ErrorCode.UNAUTHORIZED, "invalid API key")
        digest, _ = found
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": principal.name,
            "scopes": sorted(scopes),
            "kfp": key_fingerprint(digest),
            "iat": now,
            "nbf": now,
            "exp": now + self.ttl,
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode(claims, self._signing_key, algorithm=self.algorithm)
        return IssuedToken(token, self.ttl, sorted(scopes))

    def verify(self, token: str) -> Principal:
        """The principal a token stands for, or UNAUTHORIZED saying what is wrong with it."""
        if self._verifying_key is None:
            raise _unauthorized(self.disabled_reason or "this server does not accept tokens")
        try:
            header = jwt.get_unverified_header(token)
        except JWTError:
            raise _unauthorized("malformed token") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm.lower() == "none":
            raise _unauthorized("unsigned tokens (alg: none) are refused")
        if algorithm != self.algorithm:
            raise _unauthorized(f"token algorithm {algorithm} is not accepted: this server uses {self.algorithm}")
        try:
            claims = jwt.decode(
                token,
                self._verifying_key,
                algorithms=[self.algorithm],
                issuer=ISSUER,
                options={"leeway": LEEWAY_SECONDS, **{f"require_{claim}": True for claim in _REQUIRED}},
            )
        except ExpiredSignatureError:
            raise _unauthorized("token expired: exchange the API key for a new one at POST /auth/token") from None
        except JWTClaimsError as exc:
            text = str(exc)
            if "not yet valid" in text:
                raise _unauthorized("token not yet valid (nbf is in the future)") from None
            raise _unauthorized(f"token claims rejected: {text}") from None
        except JWTError as exc:
            text = str(exc)
            if "Signature verification failed" in text or "signature" in text.lower():
                raise _unauthorized("token signature is invalid (tampered, or signed with another key)") from None
            raise _unauthorized("malformed token") from None
        return self._principal(claims)

    def _principal(self, claims: dict[str, Any]) -> Principal:
        name, fingerprint, scopes = claims.get("sub"), claims.get("kfp"), claims.get("scopes")
        if not isinstance(name, str) or not isinstance(fingerprint, str) or not isinstance(scopes, list):
            raise _unauthorized("token claims rejected: sub, kfp and scopes are required")
        found = self._keys.lookup(name)
        if found is None or not hmac.compare_digest(key_fingerprint(found[0]), fingerprint):
            raise _unauthorized("the API key this token was issued for has been removed or replaced")
        _, key_principal = found
        # A key whose scopes were narrowed since takes its tokens down with it.
        granted = frozenset(s for s in scopes if isinstance(s, str)) & key_principal.scopes
        return Principal(name, granted, credential="jwt")


def _unauthorized(message: str) -> ServiceError:
    return ServiceError(ErrorCode.UNAUTHORIZED, message)


def build_token_service(settings: Settings, keys: ApiKeyStore) -> TokenService:
    """RS256 with the key pair files, HS256 with JWT_SECRET; without either, development signs with a
    secret made at start (tokens die with the process) and production issues and accepts none."""
    private_file, public_file = settings.jwt_private_key_file, settings.jwt_public_key_file
    secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret is not None else None
    if secret is not None and (private_file or public_file):
        raise SettingsError("JWT_SECRET and JWT_PRIVATE_KEY_FILE / JWT_PUBLIC_KEY_FILE: set one or the other")
    if private_file or public_file:
        private = _read_key(private_file, "JWT_PRIVATE_KEY_FILE") if private_file else None
        public = _read_key(public_file, "JWT_PUBLIC_KEY_FILE") if public_file else None
        public = _check_rsa_pair(private, public)
        reason = None if private else "this server only verifies tokens (JWT_PUBLIC_KEY_FILE without a private key)"
        return TokenService(keys, "RS256", private, public, settings.jwt_ttl, disabled_reason=reason)
    if secret is not None:
        if len(secret) < MIN_SECRET_LENGTH:
            raise SettingsError(f"JWT_SECRET: must be at least {MIN_SECRET_LENGTH} characters")
        return TokenService(keys, "HS256", secret, secret, settings.jwt_ttl)
    if settings.environment == "production":
        reason = "tokens are not enabled on this server: set JWT_SECRET, or JWT_PRIVATE_KEY_FILE / JWT_PUBLIC_KEY_FILE"
        logger.warning("no JWT_SECRET or key pair: POST /auth/token is disabled and tokens are refused")
        return TokenService(keys, "HS256", None, None, settings.jwt_ttl, disabled_reason=reason)
    ephemeral = secrets.token_urlsafe(48)
    logger.warning(
        "no JWT_SECRET or key pair: tokens are signed with a secret made at start, so they stop working on "
        "restart and other replicas refuse them; set JWT_SECRET to keep them"
    )
    return TokenService(keys, "HS256", ephemeral, ephemeral, settings.jwt_ttl)


def _read_key(path: Path, variable: str) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise SettingsError(f"{variable}: cannot read {path}: {type(exc).__name__}") from None


def _check_rsa_pair(private: str | None, public: str | None) -> str:
    """The verifying key: the public one given, else the private key's own; a pair that does not match is refused."""
    try:
        private_key = jwk.construct(private, "RS256") if private else None
        public_key = jwk.construct(public, "RS256") if public else None
    except Exception as exc:
        raise SettingsError(f"JWT key files: not an RSA key in PEM form ({type(exc).__name__})") from None
    if private is not None and "PRIVATE KEY" not in private:
        raise SettingsError("JWT_PRIVATE_KEY_FILE: holds a public key, not a private one")
    if public_key is None:
        assert private_key is not None
        derived: bytes = private_key.public_key().to_pem()
        return derived.decode()
    if private_key is not None:
        probe = b"inference-api key pair check"
        if not public_key.verify(probe, private_key.sign(probe)):
            raise SettingsError("JWT_PRIVATE_KEY_FILE and JWT_PUBLIC_KEY_FILE are not one key pair")
    assert public is not None
    return public
