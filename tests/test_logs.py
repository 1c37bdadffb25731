"""LOG_FORMAT=json: one JSON object a line, the access line's fields, tracebacks; never the key itself."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from inference_api.logs import configure_logging
from tests.conftest import USER_KEY, auth


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """The root logger writing to a buffer, with pytest's own handlers and level put back afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    yield stream
    root.handlers[:], level = saved
    root.setLevel(level)


def access_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]  # every line is one JSON object
    return [line for line in lines if line["logger"] == "inference_api.access"]


async def test_json_access_line(client: httpx.AsyncClient, log_stream: io.StringIO) -> None:
    configure_logging("INFO", "json", stream=log_stream)
    body = {"prompt": "Hello there", "max_new_tokens": 6}
    response = await client.post("/infer", json=body, headers=auth())
    assert response.status_code == 200, response.text
    meta = response.json()["metadata"]
    (line,) = access_lines(log_stream)
    assert line["request_id"] == response.headers["x-request-id"]
    assert line["key"] == "user"
    assert (line["method"], line["route"], line["status"]) == ("POST", "/infer", 200)
    assert (line["model"], line["version"]) == ("tiny", "base")
    assert line["prompt_tokens"] == meta["prompt_tokens"]
    assert line["tokens_generated"] == meta["tokens_generated"]
    assert line["queue_time"] == pytest.approx(meta["queue_time"], abs=1e-5)
    assert line["generation_time"] == pytest.approx(meta["generation_time"], abs=1e-5)
    assert line["total_time"] >= meta["generation_time"]
    assert line["level"] == "INFO" and line["error_code"] is None
    assert USER_KEY not in log_stream.getvalue()


async def test_json_access_line_of_an_error(client: httpx.AsyncClient, log_stream: io.StringIO) -> None:
    configure_logging("INFO", "json", stream=log_stream)
    response = await client.get("/chat/abc123", headers={"Authorization": f"Bearer {USER_KEY}"})
    assert response.status_code == 404
    (line,) = access_lines(log_stream)
    assert (line["route"], line["status"], line["error_code"]) == ("/chat/{session_id}", 404, "SESSION_NOT_FOUND")
    assert line["model"] is None and line["tokens_generated"] == 0
    assert USER_KEY not in log_stream.getvalue()


def test_json_error_carries_its_traceback(log_stream: io.StringIO) -> None:
    configure_logging("INFO", "json", stream=log_stream)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("inference_api.test").exception("it failed")
    (line,) = [json.loads(x) for x in log_stream.getvalue().splitlines()]
    assert line["level"] == "ERROR" and line["message"] == "it failed"
    assert line["error_type"] == "ValueError"
    assert "Traceback" in line["traceback"] and "boom" in line["traceback"]


async def test_text_access_line_stays_readable(client: httpx.AsyncClient, log_stream: io.StringIO) -> None:
    configure_logging("INFO", "text", stream=log_stream)
    response = await client.post("/infer", json={"prompt": "Hi", "max_new_tokens": 3}, headers=auth())
    meta = response.json()["metadata"]
    (line,) = [x for x in log_stream.getvalue().splitlines() if "inference_api.access" in x]
    request_id = response.headers["x-request-id"]
    expected = f"INFO inference_api.access [{request_id}] POST /infer 200 key=user model=tiny:base tokens="
    assert expected in line
    assert f"tokens={meta['prompt_tokens']}+{meta['tokens_generated']} " in line
