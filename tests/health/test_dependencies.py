"""Redis down with REDIS_URL set: generation keeps serving, sessions answer 503, readiness says so (issue 19)."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import ADMIN_KEY, RedisServer, assert_error, auth, make_settings, serving


async def test_redis_outage_spares_generation_and_is_a_clear_503_for_sessions(
    tmp_path: Path, registry_file: Path
) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        settings = make_settings(tmp_path / "data", registry_file, redis_url=redis.url)
        async with serving(settings, ready=True) as http:
            assert (await http.get("/ready")).json()["dependencies"] == {"redis": "up"}
            redis.stop()

            generation = {"prompt": "hi", "max_new_tokens": 2}
            assert (await http.post("/infer", json=generation, headers=auth())).status_code == 200
            streamed = await http.post("/infer", json={**generation, "stream": True}, headers=auth())
            assert streamed.status_code == 200 and "event: error" not in streamed.text
            openai = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            assert (await http.post("/v1/chat/completions", json=openai, headers=auth())).status_code == 200
            assert (await http.get("/usage", headers=auth())).status_code == 200

            chat = await http.post("/chat/start", json={"message": "hi"}, headers=auth())
            error = assert_error(chat, 503, "DEPENDENCY_UNAVAILABLE")
            assert "Redis" in str(error["message"]) and chat.headers["retry-after"]
            assert_error(await http.get("/chat", headers=auth()), 503, "DEPENDENCY_UNAVAILABLE")

            ready = await http.get("/ready")
            assert ready.status_code == 200  # stateless generation still works on this replica
            assert ready.json()["degraded"] == ["redis"]
            status = (await http.get("/status", headers=auth(ADMIN_KEY))).json()
            assert status["degraded"] == ["redis"] and status["dependencies"]["redis"]["status"] == "down"
            assert status["sessions"] is None

            redis.start(port=redis.port)
            await _until_up(http)
            assert (await http.post("/chat/start", json={"message": "hi"}, headers=auth())).status_code == 200
    finally:
        redis.stop()


async def _until_up(http: httpx.AsyncClient) -> None:
    import asyncio
    import time

    deadline = time.monotonic() + 20
    while (await http.get("/ready")).json()["degraded"]:
        assert time.monotonic() < deadline, "readiness never saw Redis back"
        await asyncio.sleep(0.2)
