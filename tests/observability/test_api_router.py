"""GET /stats/errors and the export route."""

from __future__ import annotations

from pathlib import Path

import httpx
from asgi_lifespan import LifespanManager

from inference_api.app import create_app
from tests.conftest import DOCS_KEY, assert_error, auth, make_settings
from tests.observability.conftest import Running, scrape


async def test_error_stats_match_the_counter(running: Running) -> None:
    client = running.client
    # Waiting for readiness got 503 MODEL_NOT_READY envelopes already: they count too.
    before = (await client.get("/stats/errors", headers=auth())).json()
    assert set(before["errors"]) <= {"MODEL_NOT_READY"}
    assert before["total"] == sum(before["errors"].values())
    assert_error(await client.get("/stats/errors"), 401, "UNAUTHORIZED")
    assert_error(await client.post("/infer", json={"prompt": 3}, headers=auth()), 422, "VALIDATION_ERROR")
    running.services.engine.refuse_for_memory(7)
    refused = await client.post("/infer", json={"prompt": "Hi"}, headers=auth())
    assert_error(refused, 503, "OVERLOADED")
    assert refused.headers["retry-after"] == "7"
    running.services.engine.refuse_for_memory(None)

    response = await client.get("/stats/errors", headers=auth(DOCS_KEY))  # any valid key will do
    assert response.status_code == 200, response.text
    stats = response.json()
    assert stats["errors"] == {**before["errors"], "OVERLOADED": 1, "UNAUTHORIZED": 1, "VALIDATION_ERROR": 1}
    assert stats["total"] == before["total"] + 3
    assert stats["since"] == running.services.engine.started_at
    found = await scrape(client)
    for code, count in stats["errors"].items():
        assert found.value("error_responses_total", code=code) == count
    assert found.value("api_requests_total", endpoint="/infer", status="503") == 1
    assert found.value("api_requests_total", endpoint="/stats/errors", status="401") == 1


async def test_metrics_path_is_open_and_configurable(tmp_path: Path, registry_file: Path) -> None:
    settings = make_settings(tmp_path / "data", registry_file, metrics_path="/internal/metrics")
    app = create_app(settings, warm_up=False)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
    ):
        found = await scrape(c, "/internal/metrics")
        assert found.value("queue_capacity") == settings.max_queue
        assert_error(await c.get("/prometheus"), 404, "NOT_FOUND")
        status = (await c.get("/status", headers=auth())).json()
        assert status["prometheus_available"] is True


async def test_disabled_export(tmp_path: Path, registry_file: Path) -> None:
    settings = make_settings(tmp_path / "data", registry_file, prometheus_enabled=False)
    app = create_app(settings, warm_up=False)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
    ):
        assert_error(await c.get("/prometheus"), 404, "NOT_FOUND")
        assert (await c.get("/status", headers=auth())).json()["prometheus_available"] is False
        # Error statistics do not depend on the export.
        stats = (await c.get("/stats/errors", headers=auth())).json()
        assert stats["errors"] == {"NOT_FOUND": 1}
