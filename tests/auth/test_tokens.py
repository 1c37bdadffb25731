"""POST /auth/token and JWTs on every route: issued, accepted, and refused with a reason for each bad kind."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwt

from inference_api.auth.keys import ApiKeyStore
from inference_api.auth.tokens import build_token_service
from inference_api.settings import ApiKeyConfig, SettingsError
from tests.conftest import DOCS_KEY, TEST_KEYS, USER_KEY, assert_error, auth, make_settings, serving

SECRET = "test-jwt-secret-0123456789abcdefghijklmnop"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def token_for(http: httpx.AsyncClient, key: str = USER_KEY, **body: Any) -> dict[str, Any]:
    response = await http.post("/auth/token", headers=auth(key), json=body or None)
    assert response.status_code == 200, response.text
    issued: dict[str, Any] = response.json()
    return issued


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], claims: dict[str, Any], key: bytes | None) -> str:
    """A token signed by hand (HS256 with any bytes as the secret), or unsigned with key None."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = b"" if key is None else hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def rsa_pair(folder: Path) -> tuple[Path, Path]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_file, public_file = folder / "jwt.pem", folder / "jwt.pub"
    private_file.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public_file.write_bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private_file, public_file


async def test_a_key_gets_a_token_that_works_on_infer(tmp_path: Path, registry_file: Path) -> None:
    settings = make_settings(tmp_path / "data", registry_file, jwt_secret=SECRET, jwt_ttl=120)
    async with serving(settings, ready=True) as http:
        issued = await token_for(http)
        assert issued["token_type"] == "bearer"
        assert issued["expires_in"] == 120
        assert issued["scopes"] == ["chat", "documents", "infer"]
        claims = jwt.get_unverified_claims(issued["access_token"])
        assert claims["sub"] == "user" and claims["exp"] - claims["iat"] == 120
        assert {"iat", "nbf", "exp", "jti", "kfp"} <= set(claims)
        assert USER_KEY not in issued["access_token"] and hashlib.sha256(USER_KEY.encode()).hexdigest() not in str(
            claims
        )

        response = await http.post(
            "/infer", json={"prompt": "Hello", "max_new_tokens": 3}, headers=bearer(issued["access_token"])
        )
        assert response.status_code == 200, response.text
        assert response.json()["metadata"]["tokens_generated"] >= 1


async def test_a_token_without_the_documents_scope_cannot_upload(tmp_path: Path, registry_file: Path) -> None:
    settings = make_settings(tmp_path / "data", registry_file, jwt_secret=SECRET)
    async with serving(settings) as http:
        narrow = await token_for(http, scopes=["infer", "chat"])
        assert narrow["scopes"] == ["chat", "infer"]
        files = {"file": ("notes.txt", b"some text to index", "text/plain")}
        error = assert_error(
            await http.post("/upload", files=files, headers=bearer(narrow["access_token"])), 403, "FORBIDDEN"
        )
        assert error["message"] == "the token for 'user' lacks the 'documents' scope"
        # A key cannot hand out scopes it does not have, and a token cannot mint another token.
        assert_error(
            await http.post("/auth/token", json={"scopes": ["infer"]}, headers=auth(DOCS_KEY)), 403, "FORBIDDEN"
        )
        error = assert_error(await http.post("/auth/token", headers=bearer(narrow["access_token"])), 403, "FORBIDDEN")
        assert "API key, not a token" in error["message"]


async def test_bad_tokens_are_refused_with_a_reason(tmp_path: Path, registry_file: Path) -> None:
    settings = make_settings(tmp_path / "data", registry_file, jwt_secret=SECRET)
    private_file, _ = rsa_pair(tmp_path)
    now = int(time.time())
    async with serving(settings) as http:
        good = (await token_for(http))["access_token"]
        claims = jwt.get_unverified_claims(good)
        assert (await http.get("/usage", headers=bearer(good))).status_code == 200

        header, _, signature = good.split(".")
        forged_claims = {**claims, "sub": "admin", "scopes": ["admin", "infer", "chat", "documents"]}
        tampered = f"{header}.{b64(json.dumps(forged_claims).encode())}.{signature}"
        cases = {
            "expired": (
                jwt.encode({**claims, "iat": now - 100, "nbf": now - 100, "exp": now - 60}, SECRET, "HS256"),
                "token expired",
            ),
            "not yet valid": (
                jwt.encode({**claims, "nbf": now + 600, "exp": now + 900}, SECRET, "HS256"),
                "token not yet valid",
            ),
            "tampered": (tampered, "token signature is invalid"),
            "other secret": (jwt.encode(claims, "another-secret-" + "x" * 32, "HS256"), "token signature is invalid"),
            "alg none": (hand_made({"alg": "none", "typ": "JWT"}, claims, None), "alg: none"),
            "RS256 where HS256 is used": (
                jwt.encode(claims, private_file.read_text(), "RS256"),
                "token algorithm RS256 is not accepted",
            ),
            "garbage": ("eyJhbGciOi.not-a-token.at-all", "malformed token"),
        }
        for name, (token, reason) in cases.items():
            error = assert_error(await http.get("/usage", headers=bearer(token)), 401, "UNAUTHORIZED")
            assert reason in error["message"], (name, error["message"])
            assert token not in error["message"]


async def test_rs256_refuses_hs256_and_the_public_key_used_as_a_secret(tmp_path: Path, registry_file: Path) -> None:
    private_file, public_file = rsa_pair(tmp_path)
    settings = make_settings(
        tmp_path / "data", registry_file, jwt_private_key_file=private_file, jwt_public_key_file=public_file
    )
    async with serving(settings) as http:
        good = (await token_for(http))["access_token"]
        assert jwt.get_unverified_header(good)["alg"] == "RS256"
        assert (await http.get("/usage", headers=bearer(good))).status_code == 200
        claims = jwt.get_unverified_claims(good)
        confused = hand_made({"alg": "HS256", "typ": "JWT"}, claims, public_file.read_bytes())
        hs_signed = jwt.encode(claims, SECRET, "HS256")
        for token in (confused, hs_signed):
            error = assert_error(await http.get("/usage", headers=bearer(token)), 401, "UNAUTHORIZED")
            assert error["message"] == "token algorithm HS256 is not accepted: this server uses RS256"


async def test_a_token_dies_with_its_key(tmp_path: Path, registry_file: Path) -> None:
    """Removed from the configuration, or the name given a new key: its tokens are refused."""
    settings = make_settings(tmp_path / "data", registry_file, jwt_secret=SECRET)
    async with serving(settings) as http:
        token = (await token_for(http))["access_token"]
    others = [k for k in TEST_KEYS if k.name != "user"]
    replaced = ApiKeyConfig(name="user", key="sk-test-user-rotated-0123456789", scopes=["infer", "chat"])
    for keys in (others, [*others, replaced]):
        settings = make_settings(tmp_path / "data", registry_file, jwt_secret=SECRET, api_keys=keys)
        async with serving(settings) as http:
            error = assert_error(await http.get("/usage", headers=bearer(token)), 401, "UNAUTHORIZED")
            assert error["message"] == "the API key this token was issued for has been removed or replaced"
    # The same key under the same secret (another replica, a restart) accepts it.
    settings = make_settings(tmp_path / "data", registry_file, jwt_secret=SECRET)
    async with serving(settings) as http:
        assert (await http.get("/usage", headers=bearer(token))).status_code == 200


async def test_without_a_secret_production_issues_no_tokens(tmp_path: Path, registry_file: Path) -> None:
    settings = make_settings(tmp_path / "data", registry_file, environment="production")
    async with serving(settings) as http:
        error = assert_error(await http.post("/auth/token", headers=auth()), 501, "NOT_CONFIGURED")
        assert "set JWT_SECRET" in error["message"]
        forged = jwt.encode({"sub": "user"}, SECRET, "HS256")
        assert_error(await http.get("/usage", headers=bearer(forged)), 401, "UNAUTHORIZED")


async def test_without_a_secret_development_signs_with_one_made_at_start(
    tmp_path: Path, registry_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path / "data", registry_file)
    async with serving(settings) as http:
        token = (await token_for(http))["access_token"]
        assert (await http.get("/usage", headers=bearer(token))).status_code == 200
    assert "signed with a secret made at start" in caplog.text
    async with serving(settings) as http:  # a restart makes another secret
        error = assert_error(await http.get("/usage", headers=bearer(token)), 401, "UNAUTHORIZED")
        assert "signature is invalid" in error["message"]


def test_token_settings_that_cannot_work_are_refused_at_start(tmp_path: Path, registry_file: Path) -> None:
    keys = ApiKeyStore(TEST_KEYS)
    private_file, public_file = rsa_pair(tmp_path)
    (tmp_path / "other").mkdir()
    other_private, _ = rsa_pair(tmp_path / "other")
    bad = {
        "JWT_SECRET: must be at least 32": {"jwt_secret": "short"},
        "set one or the other": {"jwt_secret": SECRET, "jwt_public_key_file": public_file},
        "not one key pair": {"jwt_private_key_file": other_private, "jwt_public_key_file": public_file},
        "holds a public key": {"jwt_private_key_file": public_file},
        "cannot read": {"jwt_public_key_file": tmp_path / "missing.pub"},
    }
    for message, overrides in bad.items():
        settings = make_settings(tmp_path / "data", registry_file, **overrides)
        with pytest.raises(SettingsError, match=message):
            build_token_service(settings, keys)
    # A private key alone is enough: its public half verifies.
    settings = make_settings(tmp_path / "data", registry_file, jwt_private_key_file=private_file)
    assert build_token_service(settings, keys).algorithm == "RS256"
