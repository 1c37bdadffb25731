"""Two gateway replicas over one fleet, sharing one Redis and one Chroma server (`chroma run`): a session goes on
from one gateway to the other, a document uploaded through one is cited through the other, and a key has one
rate-limit budget across both."""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path

import httpx

from inference_api.documents.embedding import Embedder
from inference_api.settings import ApiKeyConfig
from tests.conftest import TEST_KEYS, USER_KEY, RedisServer, auth
from tests.documents.test_chroma_server import chroma_url  # noqa: F401 (the fixture: a real `chroma run` server)
from tests.upstream.conftest import Replica, fleet_registry, gateway

HEADERS = auth(USER_KEY)
LIMITED_KEY = "sk-test-limited-0123456789abcd"
FACT = "The lighthouse keeper of Brannock Isle is named Oriel Vantwater and she paints the lamp room green."


def test_two_gateways_share_sessions_documents_and_budgets(
    tmp_path: Path,
    replicas: list[Replica],
    tiny_model_dir: Path,
    embedder: Embedder,
    redis_server: RedisServer,
    chroma_url: str,  # noqa: F811
) -> None:
    registry = fleet_registry(tmp_path, [r.url for r in replicas], tiny_model_dir)
    keys = [*TEST_KEYS, ApiKeyConfig(name=f"limited-{uuid.uuid4().hex[:8]}", key=LIMITED_KEY, rate_limit="4/minute")]
    shared = {"redis_url": redis_server.url, "chroma_url": chroma_url, "api_keys": keys}
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(gateway(tmp_path / "a", registry, embedder, **shared))
        b = stack.enter_context(gateway(tmp_path / "b", registry, embedder, **shared))

        session = httpx.post(f"{a}/chat/start", json={"system_prompt": "Be brief."}, headers=HEADERS).json()
        sid = session["sessionId"]
        first = httpx.post(f"{a}/chat/{sid}/messages", json={"message": "Hello", "max_new_tokens": 4}, headers=HEADERS)
        assert first.status_code == 200, first.text
        second = httpx.post(f"{b}/chat/{sid}/messages", json={"message": "Again", "max_new_tokens": 4}, headers=HEADERS)
        assert second.status_code == 200, second.text
        held = httpx.get(f"{a}/chat/{sid}", headers=HEADERS).json()["messages"]
        assert [m["content"] for m in held if m["role"] == "user"] == ["Hello", "Again"]

        uploaded = httpx.post(
            f"{a}/upload", files={"file": ("lighthouse.txt", FACT.encode())}, headers=HEADERS, timeout=60
        )
        assert uploaded.status_code == 200, uploaded.text
        grounded = httpx.post(
            f"{b}/chat/{sid}/messages",
            json={"message": "Who keeps the Brannock Isle lighthouse?", "max_new_tokens": 6, "use_documents": True},
            headers=HEADERS,
            timeout=60,
        )
        assert grounded.status_code == 200, grounded.text
        sources = grounded.json()["sources"]
        assert sources and {s["filename"] for s in sources} == {"lighthouse.txt"}

        limited = auth(LIMITED_KEY)
        answers = [httpx.get(f"{url}/models", headers=limited).status_code for url in (a, b, a, b)]
        assert answers == [200] * 4
        over = httpx.get(f"{b}/models", headers=limited)
        assert over.status_code == 429 and over.json()["error"]["code"] == "RATE_LIMITED"
