"""Security headers on every response (errors, 413s, 500s and the docs included), and CORS only when configured."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from inference_api.api.security_headers import API_CSP, EXPOSED_HEADERS
from inference_api.app import create_app
from tests.conftest import auth, make_settings

ORIGIN = "https://app.example.com"


async def open_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with LifespanManager(app), httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


@pytest.fixture
async def plain(tmp_path: Path, registry_file: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(tmp_path / "data", registry_file, max_body_kb=4), warm_up=False)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("crash")

    async for http in open_client(app):
        yield http


@pytest.fixture
async def with_cors(tmp_path: Path, registry_file: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(tmp_path / "data", registry_file, cors_origins=[ORIGIN])
    async for http in open_client(create_app(settings, warm_up=False)):
        yield http


def assert_secure(response: httpx.Response) -> None:
    headers = response.headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert "x-request-id" in headers


async def test_api_responses_carry_the_security_headers(plain: httpx.AsyncClient) -> None:
    responses = [
        await plain.get("/health"),
        await plain.get("/models", headers=auth()),
        await plain.get("/nope"),  # 404
        await plain.get("/models"),  # 401
        await plain.post("/infer", content=b"x" * 10_000, headers=auth()),  # 413 from the body cap
        await plain.get("/boom"),  # 500 from the last line of defence
        await plain.get("/openapi.json"),
    ]
    assert [r.status_code for r in responses] == [200, 200, 404, 401, 413, 500, 200]
    for response in responses:
        assert_secure(response)
        assert response.headers["content-security-policy"] == API_CSP
        assert response.headers["cache-control"] == "no-store"


async def test_the_docs_pages_load_their_own_files_only(plain: httpx.AsyncClient) -> None:
    for path in ("/docs", "/redoc"):
        response = await plain.get(path)
        assert response.status_code == 200
        assert_secure(response)
        csp = response.headers["content-security-policy"]
        # Swagger UI and ReDoc from the package, started by script files: no other host, no inline script.
        assert "script-src 'self';" in csp
        assert "connect-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert "https:" not in csp and "http:" not in csp
        assert "<script>" not in response.text


async def test_no_cors_by_default(plain: httpx.AsyncClient) -> None:
    preflight = await plain.options("/infer", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 405
    assert not any(h.startswith("access-control-") for h in preflight.headers)
    simple = await plain.get("/health", headers={"Origin": ORIGIN})
    assert not any(h.startswith("access-control-") for h in simple.headers)


async def test_preflight_is_allowed_for_a_configured_origin(with_cors: httpx.AsyncClient) -> None:
    response = await with_cors.options(
        "/infer",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "X-API-Key, Content-Type",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed = response.headers["access-control-allow-headers"].lower()
    assert "x-api-key" in allowed and "authorization" in allowed
    assert "access-control-allow-credentials" not in response.headers
    assert response.headers["x-content-type-options"] == "nosniff"  # the headers wrap CORS's own answers too


async def test_preflight_from_another_origin_is_refused(with_cors: httpx.AsyncClient) -> None:
    response = await with_cors.options(
        "/infer", headers={"Origin": "https://evil.example.net", "Access-Control-Request-Method": "POST"}
    )
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


async def test_cross_origin_responses_expose_the_request_id_and_limits(with_cors: httpx.AsyncClient) -> None:
    for response in (
        await with_cors.get("/health", headers={"Origin": ORIGIN}),
        await with_cors.get("/models", headers={"Origin": ORIGIN}),  # errors too: a browser script can read them
    ):
        assert response.headers["access-control-allow-origin"] == ORIGIN
        exposed = {h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")}
        assert exposed == {h.lower() for h in EXPOSED_HEADERS}
        assert_secure(response)
