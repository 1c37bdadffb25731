"""Secrets out of logs and /status: URL passwords, API keys (by value or only by digest), the JWT secret."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from asgi_lifespan import LifespanManager

from inference_api.app import create_app
from inference_api.redaction import RedactingFilter, Redactor, redact_url
from inference_api.settings import ApiKeyConfig
from tests.chat.conftest import RedisServer
from tests.conftest import ADMIN_KEY, TEST_KEYS, USER_KEY, auth, make_settings

REDIS_PASSWORD = "s3cret-redis-pass"
HASHED_ONLY_KEY = "sk-hashed-only-key-0123456789"
JWT_SECRET = "jwt-signing-secret-value-42-0123456789"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@localhost:6379/0", "redis://:***@localhost:6379/0"),
        ("rediss://user:p%40ss@cache.internal:6380/2", "rediss://user:***@cache.internal:6380/2"),
        ("redis://token@localhost", "redis://***@localhost"),
        ("https://chroma.internal:8000", "https://chroma.internal:8000"),
        ("http://h:1/?password=x&db=1", "http://h:1/?password=***&db=1"),
        (None, None),
    ],
)
def test_redact_url(url: str | None, shown: str | None) -> None:
    assert redact_url(url) == shown


def test_redactor_masks_configured_and_secret_shaped_text() -> None:
    digests = {hashlib.sha256(HASHED_ONLY_KEY.encode()).hexdigest(), hashlib.sha256(USER_KEY.encode()).hexdigest()}
    redactor = Redactor({REDIS_PASSWORD, JWT_SECRET}, lambda word: hashlib.sha256(word.encode()).hexdigest() in digests)
    text = (
        f"connect redis://:{REDIS_PASSWORD}@db:6379 failed; signing with {JWT_SECRET}; "
        f"key={HASHED_ONLY_KEY} header X-API-Key: {USER_KEY}; Authorization: Bearer abc.def.ghi; "
        "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl; an ordinary-but-long-word-here stays"
    )
    out = redactor(text)
    for secret in (REDIS_PASSWORD, JWT_SECRET, HASHED_ONLY_KEY, USER_KEY, "abc.def.ghi", "eyJhbGciOiJIUzI1NiJ9"):
        assert secret not in out
    assert "redis://:***@db:6379" in out
    assert "an ordinary-but-long-word-here stays" in out


def test_filter_redacts_arguments_and_tracebacks() -> None:
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Collect()
    handler.addFilter(RedactingFilter(Redactor({REDIS_PASSWORD})))
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("url is %s", f"redis://:{REDIS_PASSWORD}@h")
        try:
            raise ConnectionError(f"cannot reach redis://x:{REDIS_PASSWORD}@h")
        except ConnectionError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert len(records) == 2
    assert all(REDIS_PASSWORD not in r for r in records)
    assert "redis://:***@h" in records[0]
    assert "ConnectionError: cannot reach redis://x:***@h" in records[1]


# --- the app: /status and the logs, with a password-protected Redis ---------------------------------------


@pytest.fixture
def protected_redis(tmp_path: Path) -> Iterator[str]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        redis.Redis(host="127.0.0.1", port=server.port).config_set("requirepass", REDIS_PASSWORD)
        yield f"redis://:{REDIS_PASSWORD}@127.0.0.1:{server.port}/0"
    finally:
        server.stop()


@pytest.fixture
async def redis_client(tmp_path: Path, registry_file: Path, protected_redis: str) -> AsyncIterator[httpx.AsyncClient]:
    keys = [*TEST_KEYS, ApiKeyConfig(name="hashed", key_sha256=hashlib.sha256(HASHED_ONLY_KEY.encode()).hexdigest())]
    settings = make_settings(
        tmp_path / "data", registry_file, redis_url=protected_redis, api_keys=keys, jwt_secret=JWT_SECRET
    )
    app = create_app(settings, warm_up=False)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError(f"lost {protected_redis} while serving key {ADMIN_KEY} / {HASHED_ONLY_KEY}")

    @app.get("/chatty")
    async def chatty() -> None:
        logging.getLogger("inference_api.test").warning(
            "settings: redis=%s jwt=%s key=%s", protected_redis, JWT_SECRET, USER_KEY
        )

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with LifespanManager(app), httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


async def test_status_shows_the_redis_url_without_its_password(redis_client: httpx.AsyncClient) -> None:
    response = await redis_client.get("/status", headers=auth())
    assert response.status_code == 200
    backends = response.json()["backends"]
    assert backends["sessions"] == "redis"
    assert backends["redis_url"].startswith("redis://:***@127.0.0.1:")
    assert REDIS_PASSWORD not in response.text and JWT_SECRET not in response.text


async def test_logs_never_show_the_password_keys_or_jwt_secret(
    redis_client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    assert (await redis_client.get("/boom")).status_code == 500
    assert (await redis_client.get("/chatty")).status_code == 200
    # The sessions really live in that Redis: the password was needed and used.
    assert (await redis_client.post("/chat/start", json={}, headers=auth())).status_code == 200
    text = caplog.text
    assert "RuntimeError: lost redis://:***@127.0.0.1" in text  # the traceback is kept, its secrets are not
    assert "settings: redis=redis://:***@127.0.0.1" in text
    for secret in (REDIS_PASSWORD, ADMIN_KEY, USER_KEY, HASHED_ONLY_KEY, JWT_SECRET):
        assert secret not in text, secret
