"""HTTP metrics: statuses, route templates (never raw paths), sizes of streamed responses."""

from __future__ import annotations

from tests.conftest import assert_error, auth
from tests.observability.conftest import Running, scrape


async def test_error_statuses_are_counted_by_route(running: Running) -> None:
    client = running.client
    assert_error(await client.post("/infer", json={"prompt": "Hi"}), 401, "UNAUTHORIZED")
    assert_error(
        await client.post("/infer", json={"prompt": "Hi", "max_new_tokens": -1}, headers=auth()),
        422,
        "VALIDATION_ERROR",
    )
    found = await scrape(client)
    none = {"model": "", "version": ""}
    assert found.value("api_requests_total", endpoint="/infer", status="401", **none) == 1
    assert found.value("api_requests_total", endpoint="/infer", status="422", **none) == 1
    assert found.value("error_responses_total", code="UNAUTHORIZED") == 1
    assert found.value("error_responses_total", code="VALIDATION_ERROR") == 1


async def test_endpoint_is_the_route_template(running: Running) -> None:
    client = running.client
    assert_error(await client.get("/chat/some-session-id", headers=auth()), 404, "SESSION_NOT_FOUND")
    assert_error(await client.get("/no/such/path"), 404, "NOT_FOUND")
    found = await scrape(client)
    endpoints = {labels["endpoint"] for labels in found.labels("api_requests_total")}
    assert "/chat/{session_id}" in endpoints
    assert "unmatched" in endpoints
    assert not any("some-session-id" in e or "/no/such" in e for e in endpoints)
    assert found.value("api_requests_total", endpoint="/chat/{session_id}", status="404") == 1


async def test_streamed_response_is_measured_whole(running: Running) -> None:
    client = running.client
    body = {"prompt": "Hello", "max_new_tokens": 8, "stream": True}
    before = await scrape(client)
    async with client.stream("POST", "/infer", json=body, headers=auth()) as response:
        assert response.status_code == 200
        received = b"".join([chunk async for chunk in response.aiter_raw()])
    after = await scrape(client)
    sent = after.value("api_response_size_bytes_sum", endpoint="/infer") - before.value(
        "api_response_size_bytes_sum", endpoint="/infer"
    )
    assert sent == len(received) > 0
    assert after.value("api_requests_total", endpoint="/infer", status="200", model="tiny", version="base") == 1
    assert after.value("tokens_generated_total", model="tiny") > before.value("tokens_generated_total", model="tiny")


async def test_scrapes_themselves_are_not_counted(running: Running) -> None:
    await scrape(running.client)
    found = await scrape(running.client)
    assert "/prometheus" not in {labels["endpoint"] for labels in found.labels("api_requests_total")}
