"""GET /chat/{id}/analysis over a session made here, with timings the test sets."""

from __future__ import annotations

import httpx
import pytest
from asgi_lifespan import LifespanManager

from inference_api.app import create_app
from inference_api.chat.types import Message
from inference_api.documents.embedding import Embedder
from inference_api.settings import Settings
from tests.conftest import ADMIN_KEY, assert_error, auth, wait_ready


def turn(question: str, answer: str, asked: float, took: float, generated: int) -> list[Message]:
    return [
        Message(role="user", content=question, timestamp=asked),
        Message(role="assistant", content=answer, timestamp=asked + took, usage={"tokens_generated": generated}),
    ]


async def test_analysis_of_a_session(settings: Settings, embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Embedder, "load", classmethod(lambda cls, *args, **kwargs: embedder))
    app = create_app(settings)
    async with (
        LifespanManager(app, startup_timeout=120, shutdown_timeout=30),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=60) as http,
    ):
        await wait_ready(http)
        store = app.state.services.sessions
        messages = [
            *turn("How do I bake sourdough bread?", "Feed the starter, then bake.", 1000.0, 2.0, 7),
            *turn("How long should sourdough bread dough rise?", "About eight hours.", 1010.0, 4.0, 4),
            *turn("Which planet is closest to the Sun?", "Mercury.", 1020.0, 1.0, 2),
        ]
        session = await store.create("user", system_prompt="Be brief.", messages=messages)
        session = await store.fold("user", session.id, summary="They greeted each other.", folded=0)

        answer = await http.get(f"/chat/{session.id}/analysis", headers=auth())
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["sessionId"] == session.id
        assert body["roles"]["user"]["messages"] == 3 and body["roles"]["assistant"] == {"messages": 3, "tokens": 13}
        assert body["roles"]["user"]["tokens"] > 3 * 5  # counted in the model's tokens
        assert body["reply_latency"] == {"replies": 3, "p50": 2.0, "max": 4.0}
        lengths = body["turns"]["lengths"]
        assert [t["assistant_tokens"] for t in lengths] == [7, 4, 2] and body["turns"]["count"] == 3
        assert body["turns"]["max_tokens"] == max(t["user_tokens"] + t["assistant_tokens"] for t in lengths)
        assert body["summaries"]["summary"] == "They greeted each other." and body["summaries"]["summary_tokens"] > 3
        topics = body["topics"]
        assert topics["model"] == "all-MiniLM-L6-v2"
        first, second = topics["steps"]
        assert (first["from"], first["to"], second["from"], second["to"]) == (0, 2, 2, 4)
        # Two questions on sourdough are close; the planet is a new topic.
        assert first["similarity"] > 0.5 > second["similarity"]
        assert topics["changes"] == [4] and not first["topic_changed"] and second["topic_changed"]

        stricter = (await http.get(f"/chat/{session.id}/analysis?topic_threshold=0.99", headers=auth())).json()
        assert stricter["topics"]["changes"] == [2, 4]
        assert_error(await http.get(f"/chat/{session.id}/analysis", headers=auth(ADMIN_KEY)), 404, "SESSION_NOT_FOUND")

        empty = await store.create("user")
        nothing = (await http.get(f"/chat/{empty.id}/analysis", headers=auth())).json()
        assert nothing["reply_latency"] == {"replies": 0, "p50": None, "max": None}
        assert nothing["topics"]["steps"] == [] and nothing["roles"] == {}
