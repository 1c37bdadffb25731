"""The chat routes over the app: sessions, ownership, branching, streaming, concurrency, summaries, restarts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from inference_api.app import create_app
from inference_api.settings import Settings
from tests.chat.conftest import RedisServer
from tests.conftest import ADMIN_KEY, DOCS_KEY, TEST_KEYS, USER_KEY, auth, make_settings, wait_ready


@asynccontextmanager
async def app_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with LifespanManager(app), httpx.AsyncClient(transport=transport, base_url="http://t", timeout=120) as http:
        await wait_ready(http)
        yield http


async def start(http: httpx.AsyncClient, key: str = USER_KEY, **body: Any) -> dict[str, Any]:
    response = await http.post("/chat/start", json=body, headers=auth(key))
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def say(http: httpx.AsyncClient, session_id: str, message: str, key: str = USER_KEY, **extra: Any) -> Any:
    body = {"message": message, "max_new_tokens": 8, **extra}
    return await http.post(f"/chat/{session_id}/messages", json=body, headers=auth(key))


async def test_a_session_keeps_its_turns(client: httpx.AsyncClient) -> None:
    started = await start(client, system_prompt="Be brief.", message="Hello")
    session_id = started["sessionId"]
    assert [m["role"] for m in started["messages"]] == ["user", "assistant"]
    assert started["reply"]["message"]["content"] == started["messages"][1]["content"]
    reply = await say(client, session_id, "And again")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["usage"]["tokens_generated"] > 0 and body["usage"]["prompt_tokens"] > 0
    assert body["summarized_turns"] == 0
    session = (await client.get(f"/chat/{session_id}", headers=auth())).json()
    assert [m["content"] for m in session["messages"]][::2] == ["Hello", "And again"]
    assert session["system_prompt"] == "Be brief."
    listed = (await client.get("/chat", headers=auth())).json()["sessions"]
    assert [s["sessionId"] for s in listed] == [session_id] and listed[0]["message_count"] == 4


async def test_the_history_reaches_the_model(client: httpx.AsyncClient) -> None:
    session_id = (await start(client))["sessionId"]
    first = (await say(client, session_id, "one")).json()["usage"]["prompt_tokens"]
    second = (await say(client, session_id, "two")).json()["usage"]["prompt_tokens"]
    assert second > first + 3  # the first turn is in the second prompt


async def test_sessions_belong_to_their_key(client: httpx.AsyncClient) -> None:
    session_id = (await start(client, key=USER_KEY))["sessionId"]
    for method, path, body in [
        ("GET", f"/chat/{session_id}", None),
        ("DELETE", f"/chat/{session_id}", None),
        ("POST", f"/chat/{session_id}/messages", {"message": "hi"}),
        ("POST", f"/chat/{session_id}/branch", {"at_message": 0}),
    ]:
        response = await client.request(method, path, json=body, headers=auth(ADMIN_KEY))
        assert response.status_code == 404, (path, response.text)
        assert response.json()["error"]["code"] == "SESSION_NOT_FOUND"
    assert (await client.get("/chat", headers=auth(ADMIN_KEY))).json()["sessions"] == []
    assert (await client.get(f"/chat/{session_id}", headers=auth(USER_KEY))).status_code == 200
    forbidden = await client.post("/chat/start", json={}, headers=auth(DOCS_KEY))
    assert forbidden.status_code == 403


async def test_delete_and_unknown_sessions(client: httpx.AsyncClient) -> None:
    session_id = (await start(client))["sessionId"]
    assert (await client.delete(f"/chat/{session_id}", headers=auth())).json() == {"deleted": True}
    assert (await client.get(f"/chat/{session_id}", headers=auth())).status_code == 404
    assert (await say(client, "no-such-session", "hi")).status_code == 404


async def test_branch_copies_the_first_messages_and_leaves_the_original(client: httpx.AsyncClient) -> None:
    session_id = (await start(client, message="first"))["sessionId"]
    await say(client, session_id, "second")
    branch = await client.post(f"/chat/{session_id}/branch", json={"at_message": 2}, headers=auth())
    assert branch.status_code == 200, branch.text
    copy = branch.json()
    assert copy["sessionId"] != session_id
    assert copy["messages"][0]["content"] == "first" and len(copy["messages"]) == 2
    original = (await client.get(f"/chat/{session_id}", headers=auth())).json()
    assert len(original["messages"]) == 4
    for at in (5, -1):
        bad = await client.post(f"/chat/{session_id}/branch", json={"at_message": at}, headers=auth())
        assert bad.status_code == 422
        assert "at_message" in bad.json()["error"]["message"]


async def test_a_chosen_session_id_is_resumed_by_start(client: httpx.AsyncClient) -> None:
    first = await start(client, sessionId="my-chat", message="hi")
    again = await start(client, sessionId="my-chat")
    assert again["sessionId"] == first["sessionId"] == "my-chat"
    assert len(again["messages"]) == 2
    bad = await client.post("/chat/start", json={"sessionId": "bad id/../x"}, headers=auth())
    assert bad.status_code == 422


async def test_streamed_reply_is_stored_as_streamed(client: httpx.AsyncClient) -> None:
    session_id = (await start(client))["sessionId"]
    body = {"message": "tell me", "max_new_tokens": 10, "stream": True}
    async with client.stream("POST", f"/chat/{session_id}/messages", json=body, headers=auth()) as response:
        assert response.status_code == 200
        events = [json.loads(line[6:]) async for line in response.aiter_lines() if line.startswith("data: ")]
    text = "".join(e["delta"] for e in events if "delta" in e)
    final = events[-1]
    assert final["message"]["content"] == text
    stored = (await client.get(f"/chat/{session_id}", headers=auth())).json()["messages"]
    assert stored[-1]["content"] == text


async def test_two_messages_sent_at_once_are_both_applied_in_turn(client: httpx.AsyncClient) -> None:
    session_id = (await start(client))["sessionId"]
    replies = await asyncio.gather(say(client, session_id, "alpha"), say(client, session_id, "beta"))
    assert all(r.status_code == 200 for r in replies)
    messages = (await client.get(f"/chat/{session_id}", headers=auth())).json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert sorted(m["content"] for m in messages[::2]) == ["alpha", "beta"]
    # The second turn saw the first: its prompt was longer.
    prompts = [r.json()["usage"]["prompt_tokens"] for r in replies]
    assert max(prompts) > min(prompts)


@pytest.mark.real_model
async def test_a_long_conversation_is_summarised_and_goes_on(shared_data_dir: Path, default_model_dir: Path) -> None:
    """The real model, so that the summary is one it wrote."""
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        data_dir=shared_data_dir,
        api_keys=TEST_KEYS,
        max_input_tokens=200,
        summary_max_tokens=40,
    )
    sessions_file = shared_data_dir / "sessions.sqlite3"
    sessions_file.unlink(missing_ok=True)
    async with app_client(settings) as http:
        session_id = (await start(http, system_prompt="You are a helpful assistant."))["sessionId"]
        folded = []
        for turn in range(12):
            reply = await say(http, session_id, f"This is message number {turn} of our long talk.", max_new_tokens=12)
            assert reply.status_code == 200, reply.text
            folded.append(reply.json()["summarized_turns"])
        session = (await http.get(f"/chat/{session_id}", headers=auth())).json()
    assert sum(folded) > 0  # some replies had to fold older turns away
    assert session["summary"]  # written by the model
    assert session["summarized_turns"] == sum(folded)
    assert len(session["messages"]) == 24 - sum(folded)  # nothing vanished without being summarised


async def test_a_message_that_cannot_fit_is_refused(tmp_path: Path, registry_file: Path) -> None:
    settings = make_settings(tmp_path / "data", registry_file, max_input_tokens=60)
    async with app_client(settings) as http:
        session_id = (await start(http))["sessionId"]
        reply = await say(http, session_id, "word " * 100)
    assert reply.status_code == 400
    assert reply.json()["error"]["code"] == "TOKEN_LIMIT_EXCEEDED"


async def test_sessions_survive_a_restart_on_sqlite(tmp_path: Path, registry_file: Path) -> None:
    settings = make_settings(tmp_path / "data", registry_file)
    async with app_client(settings) as http:
        session_id = (await start(http, message="remember me"))["sessionId"]
    async with app_client(settings) as http:
        session = (await http.get(f"/chat/{session_id}", headers=auth())).json()
    assert session["messages"][0]["content"] == "remember me"


async def test_sessions_survive_a_restart_and_are_shared_on_redis(
    tmp_path: Path, registry_file: Path, redis_server: RedisServer
) -> None:
    first = make_settings(tmp_path / "one", registry_file, redis_url=redis_server.url)
    second = make_settings(tmp_path / "two", registry_file, redis_url=redis_server.url)
    async with app_client(first) as http:
        session_id = (await start(http, message="kept in redis"))["sessionId"]
    async with app_client(second) as http:  # another replica, another data dir: same sessions
        session = (await http.get(f"/chat/{session_id}", headers=auth())).json()
        await http.delete(f"/chat/{session_id}", headers=auth())
    assert session["messages"][0]["content"] == "kept in redis"


async def test_maintenance_expires_idle_sessions_and_records_it(tmp_path: Path, registry_file: Path) -> None:
    settings = make_settings(tmp_path / "data", registry_file, session_ttl=0.5)
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with LifespanManager(app), httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as http:
        await wait_ready(http)
        session_id = (await start(http))["sessionId"]
        await asyncio.sleep(0.6)
        record = await app.state.services.maintenance.run_once("session-expiry")
        status = (await http.get("/status", headers=auth())).json()
        gone = await http.get(f"/chat/{session_id}", headers=auth())
    assert record.last_result == {"expired": 1, "remaining": 0}
    assert gone.status_code == 404
    jobs = {job["name"]: job for job in status["maintenance"]}
    assert jobs["session-expiry"]["runs"] == 1 and jobs["session-expiry"]["last_duration"] is not None
    assert jobs["vector-integrity"]["runs"] == 0  # no document store in use yet: nothing to check
