"""The /v1 routes share the engine's cancellation, deadlines and failures with /infer, and answer them in
OpenAI's shape: a client that leaves stops its generation, a deadline mid-stream arrives as an error event
the SDK raises, an unexpected crash is a 500 in OpenAI's shape."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from fastapi import FastAPI

from inference_api.api.errors import openai_error_body, openai_status
from inference_api.app import create_app
from inference_api.engine.batch import DecodeBatch
from inference_api.engine.worker import DeviceWorker
from inference_api.errors import ErrorCode, ServiceError
from tests.conftest import make_settings
from tests.openai_api.conftest import sdk, serving

LONG = 150  # tokens at >= 15 ms a step: seconds of generation, longer than the deadline below
PROMPT = [{"role": "user", "content": "Tell a long story."}]


@pytest.fixture
def slow(tmp_path: Path, registry_file: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, FastAPI]]:
    original = DecodeBatch.step

    def step(self: DecodeBatch) -> list[str]:
        time.sleep(0.015)
        return original(self)

    monkeypatch.setattr(DecodeBatch, "step", step)
    app = create_app(make_settings(tmp_path / "data", registry_file, request_timeout=1.0))

    @app.get("/v1/boom")
    async def boom() -> None:
        raise RuntimeError("secret detail")

    with serving(app) as url:
        yield url, app


def worker_of(app: FastAPI) -> DeviceWorker:
    worker: DeviceWorker = app.state.services.engine.workers[0]
    return worker


def until(condition: object, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not callable(condition) or not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_leaving_a_stream_cancels_its_generation(slow: tuple[str, FastAPI]) -> None:
    url, app = slow
    worker = worker_of(app)
    with sdk(url).chat.completions.create(model="tiny", messages=PROMPT, max_tokens=LONG, stream=True) as stream:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break  # leaving the block closes the connection mid-generation
    until(lambda: not worker.running())
    assert worker.stats.cancelled == 1


def test_a_deadline_mid_stream_is_an_error_event_the_sdk_raises(slow: tuple[str, FastAPI]) -> None:
    url, _ = slow
    stream = sdk(url).completions.create(model="tiny", prompt="Once", max_tokens=LONG, stream=True)
    with pytest.raises(openai.APIError) as failed:
        for _ in stream:
            pass
    assert failed.value.body == {
        "message": failed.value.message,
        "type": "server_error",
        "param": None,
        "code": "timeout",
    }


def test_a_non_streaming_deadline_is_504(slow: tuple[str, FastAPI]) -> None:
    url, _ = slow
    with pytest.raises(openai.InternalServerError) as failed:
        sdk(url).chat.completions.create(model="tiny", messages=PROMPT, max_tokens=LONG)
    assert failed.value.status_code == 504 and failed.value.code == "timeout"


def test_a_crash_is_a_500_in_openais_shape_without_details(slow: tuple[str, FastAPI]) -> None:
    url, _ = slow
    with pytest.raises(openai.InternalServerError) as crashed:
        sdk(url).get("/boom", cast_to=object, options={"headers": {"X-Request-ID": "trace-1"}})
    assert crashed.value.status_code == 500 and crashed.value.request_id == "trace-1"
    body = crashed.value.body
    assert isinstance(body, dict) and body["message"] == "internal error; see the server log"
    assert body | {"message": ""} == {"message": "", "type": "server_error", "param": None, "code": "internal_error"}
    assert "secret" not in crashed.value.response.text


@pytest.mark.parametrize(
    ("code", "status", "kind", "openai_code"),
    [
        (ErrorCode.OVERLOADED, 503, "server_error", "overloaded"),
        (ErrorCode.MODEL_NOT_READY, 503, "server_error", "model_not_ready"),
        (ErrorCode.RATE_LIMITED, 429, "rate_limit_error", "rate_limit_exceeded"),
        (ErrorCode.VALIDATION_ERROR, 400, "invalid_request_error", "validation_error"),
        (ErrorCode.TOKEN_LIMIT_EXCEEDED, 400, "invalid_request_error", "context_length_exceeded"),
        (ErrorCode.FORBIDDEN, 403, "permission_error", "forbidden"),
    ],
)
def test_each_code_has_an_openai_status_type_and_code(
    code: ErrorCode, status: int, kind: str, openai_code: str
) -> None:
    error = ServiceError(code, "why")
    assert openai_status(error) == status
    assert openai_error_body(error) == {"error": {"message": "why", "type": kind, "param": None, "code": openai_code}}
