"""The error envelope and request ids: unknown routes, wrong methods, bad bodies, and unexpected crashes."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from inference_api.app import create_app
from inference_api.settings import Settings
from tests.conftest import ADMIN_KEY, assert_error, auth

SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


async def test_unknown_route_is_not_found(client: httpx.AsyncClient) -> None:
    response = await client.get("/no/such/route")
    error = assert_error(response, 404, "NOT_FOUND")
    assert "/no/such/route" in str(error["message"])
    assert SAFE_ID.match(response.headers["x-request-id"])


async def test_wrong_method_is_method_not_allowed(client: httpx.AsyncClient) -> None:
    response = await client.delete("/health")
    error = assert_error(response, 405, "METHOD_NOT_ALLOWED")
    assert "DELETE" in str(error["message"])
    assert "GET" in response.headers.get("allow", "")
    assert_error(await client.get("/models/tiny/load", headers=auth(ADMIN_KEY)), 405, "METHOD_NOT_ALLOWED")


async def test_auth_errors_use_the_envelope(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/models"), 401, "UNAUTHORIZED")
    assert_error(await client.get("/models", headers=auth("sk-not-a-key-0000000000")), 401, "UNAUTHORIZED")


async def test_malformed_json_is_a_validation_error(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/models/tiny/load",
        content=b'{"version": ',
        headers={**auth(ADMIN_KEY), "content-type": "application/json"},
    )
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert error["details"][0]["field"] == "body"  # type: ignore[index]


async def test_wrong_field_type_names_the_field(client: httpx.AsyncClient) -> None:
    response = await client.post("/models/tiny/load", json={"version": 5}, headers=auth(ADMIN_KEY))
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert [d["field"] for d in error["details"]] == ["version"]  # type: ignore[attr-defined]
    assert "version" in str(error["message"])


async def test_every_response_has_a_request_id(client: httpx.AsyncClient) -> None:
    first = await client.get("/health")
    second = await client.get("/health")
    assert first.status_code == 200
    ids = [first.headers["x-request-id"], second.headers["x-request-id"]]
    assert all(SAFE_ID.match(i) for i in ids)
    assert ids[0] != ids[1]


async def test_client_request_id_is_echoed(client: httpx.AsyncClient) -> None:
    for request_id in ("abc-123", "req.42:retry_1", "A" * 128):
        ok = await client.get("/health", headers={"X-Request-ID": request_id})
        assert ok.headers["x-request-id"] == request_id
        error = assert_error(await client.get("/nope", headers={"X-Request-ID": request_id}), 404, "NOT_FOUND")
        assert error["request_id"] == request_id


async def test_unsafe_request_id_is_replaced(client: httpx.AsyncClient) -> None:
    for request_id in ("A" * 129, "x" * 300, "abc 123", "a/b", "<script>", "id;drop", "café"):
        response = await client.get("/nope", headers={b"X-Request-ID": request_id.encode()})
        error = assert_error(response, 404, "NOT_FOUND")
        generated = response.headers["x-request-id"]
        assert generated != request_id
        assert SAFE_ID.match(generated), generated
        assert error["request_id"] == generated
        assert request_id not in response.text


async def test_empty_request_id_is_replaced(client: httpx.AsyncClient) -> None:
    response = await client.get("/health", headers={"X-Request-ID": ""})
    assert SAFE_ID.match(response.headers["x-request-id"])


# --- unexpected exceptions ---------------------------------------------------------------------


@pytest.fixture
async def crashing_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app: FastAPI = create_app(settings, warm_up=False)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internal detail /etc/passwd")

    @app.get("/boom-sync")
    def boom_sync() -> None:
        raise KeyError("secret-key-name")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as http,
    ):
        yield http


@pytest.mark.parametrize("path", ["/boom", "/boom-sync"])
async def test_unexpected_exception_is_internal_error_without_details(
    crashing_client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    caplog.set_level(logging.ERROR)
    response = await crashing_client.get(path)
    error = assert_error(response, 500, "INTERNAL_ERROR")
    assert SAFE_ID.match(str(error["request_id"]))
    for leaked in ("secret", "RuntimeError", "KeyError", "Traceback", "/etc/passwd", 'File "'):
        assert leaked not in response.text
    # The details go to the server log instead.
    assert any(r.exc_info and "secret" in str(r.exc_info[1]) for r in caplog.records)


async def test_internal_error_carries_the_client_request_id(crashing_client: httpx.AsyncClient) -> None:
    response = await crashing_client.get("/boom", headers={"X-Request-ID": "trace-500"})
    error = assert_error(response, 500, "INTERNAL_ERROR")
    assert error["request_id"] == "trace-500"


async def test_app_keeps_serving_after_a_crash(crashing_client: httpx.AsyncClient) -> None:
    assert (await crashing_client.get("/boom")).status_code == 500
    assert (await crashing_client.get("/health")).status_code == 200


async def test_body_that_is_not_utf8_is_a_named_validation_error(client: httpx.AsyncClient) -> None:
    # Found by the fuzz pass: FastAPI's bare "There was an error parsing the body" said nothing useful.
    response = await client.post(
        "/models/tiny/load",
        content=b'{"version": "\xff\xfe"}',
        headers={**auth(ADMIN_KEY), "content-type": "application/json"},
    )
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert "UTF-8" in str(error["message"])


async def test_body_nested_too_deeply_says_so(client: httpx.AsyncClient) -> None:
    # Issue 19: 100,000 levels of nesting were refused as "not valid UTF-8 text".
    body = b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = await client.post("/infer", content=body, headers={**auth(), "content-type": "application/json"})
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert "nested too deeply" in str(error["message"])
    assert "UTF-8" not in str(error["message"])
