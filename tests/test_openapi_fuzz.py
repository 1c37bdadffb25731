"""Schemathesis over every operation of the app's own OpenAPI document, in-process, with and without a key:
no 5xx, and every error in the product's envelope (OpenAI's shape under /v1/)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, seed
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.python import asgi

from inference_api.app import create_app
from tests.conftest import ADMIN_KEY, auth, make_settings

# Bounded so the whole file takes about a minute on two cores.
EXAMPLES_WITH_KEY = 30
EXAMPLES_WITHOUT_KEY = 3
MAX_NEW_TOKENS = 8
ENVELOPE_KEYS = {"code", "message", "request_id"}


@pytest.fixture
def fuzz_app(tmp_path: Path, tiny_model_dir: Path) -> Iterator[FastAPI]:
    # One app per test: schemathesis' pytest plugin ends every ASGI lifespan when a test ends.
    folder = tmp_path
    registry = folder / "models.yaml"
    registry.write_text(json.dumps({"models": [{"name": "tiny", "path": str(tiny_model_dir)}]}))
    settings = make_settings(
        folder / "data", registry, max_new_tokens=MAX_NEW_TOKENS, max_input_tokens=64, max_body_kb=64, max_upload_mb=0.5
    )
    app = create_app(settings)
    # Schemathesis runs the app's lifespan in its own event loop thread; it must be ready before fuzzing.
    with asgi.get_client(app) as client:
        deadline = time.monotonic() + 120
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "the fuzzed app did not become ready"
            time.sleep(0.05)
        yield app
    asgi.shutdown_lifespans()


def check_response(case: schemathesis.Case, response: schemathesis.Response) -> None:
    where = f"{case.method} {case.formatted_path} -> {response.status_code}\n{case.as_curl_command()}"
    assert response.status_code < 500, f"server error: {where}\n{response.text}"
    if response.status_code < 400:
        return
    assert response.headers.get("content-type", [""])[0].startswith("application/json"), where
    body: Any = json.loads(response.content)
    assert isinstance(body, dict) and set(body) == {"error"}, f"not an error envelope: {where}\n{response.text}"
    error = body["error"]
    if case.path.startswith("/v1/"):
        # OpenAI's shape, so its SDKs read the error as their own.
        assert isinstance(error.get("message"), str) and "type" in error, where
        return
    assert ENVELOPE_KEYS <= set(error) <= ENVELOPE_KEYS | {"details"}, f"{where}\n{response.text}"
    assert isinstance(error["code"], str) and isinstance(error["message"], str) and error["message"], where
    assert error["request_id"] == response.headers["x-request-id"][0], where
    for leak in ("Traceback", 'File "', "site-packages", str(Path(__file__).parents[1])):
        assert leak not in response.text, f"leaks {leak!r}: {where}\n{response.text}"


def within_limits(case: schemathesis.Case) -> None:
    """Keep a valid max_new_tokens valid under the low MAX_NEW_TOKENS (the schema cannot know the setting, and the
    default of 128 is over it), so valid generation requests reach the model instead of all stopping at 422."""
    body = case.body
    if case.path not in ("/infer", "/chat/{session_id}/messages") or not isinstance(body, dict):
        return
    value = body.get("max_new_tokens", 1)
    if type(value) is int and value > 0:
        body["max_new_tokens"] = value % MAX_NEW_TOKENS + 1


def operations(app: FastAPI) -> list[schemathesis.APIOperation]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], allow_x00=False)
    found = [result.ok() for result in schema.get_all_operations()]
    assert len(found) >= 15  # every route of the document, not a lucky few
    return found


def fuzz(app: FastAPI, headers: dict[str, str], examples: int) -> None:
    for operation in operations(app):
        strategy = st.one_of(operation.as_strategy(mode) for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE))

        @seed(1234)
        @hypothesis_settings(
            max_examples=examples,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],  # a failure is reported as found, not shrunk (slow here)
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run(case: schemathesis.Case) -> None:
            within_limits(case)
            response = case.call(headers={**(case.headers or {}), **headers})
            check_response(case, response)

        run()


def test_fuzz_with_a_key(fuzz_app: FastAPI) -> None:
    fuzz(fuzz_app, auth(ADMIN_KEY), EXAMPLES_WITH_KEY)


def test_fuzz_without_a_key(fuzz_app: FastAPI) -> None:
    fuzz(fuzz_app, {}, EXAMPLES_WITHOUT_KEY)
