"""The real default model behind a real uvicorn process, over a real socket."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_KEY

pytestmark = pytest.mark.real_model


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("API_", "DEFAULT_", "MODEL_"))}
    env.update(
        DATA_DIR=str(data_dir),
        API_KEYS=json.dumps([{"name": "admin", "key": ADMIN_KEY, "scopes": ["infer", "admin"]}]),
        HF_HUB_OFFLINE="1",
        LOG_LEVEL="INFO",
        # The drain test polls /status every 50 ms: far past the default 60 requests a minute.
        RATE_LIMIT="100000/minute",
        **extra,
    )
    return env


@contextlib.contextmanager
def running_server(data_dir: Path, **extra: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "inference_api", "serve", "--port", str(port)],
        env=server_env(data_dir, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                output = process.stdout.read().decode() if process.stdout else ""
                raise AssertionError(f"server exited early:\n{output}")
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        else:
            raise AssertionError("server never became ready")
        yield url, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


@pytest.fixture(scope="module")
def server(shared_data_dir: Path, default_model_dir: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    with running_server(shared_data_dir) as running:
        yield running


def test_capital_of_france_mentions_paris(server: tuple[str, subprocess.Popen[bytes]]) -> None:
    url, _ = server
    response = httpx.post(
        f"{url}/infer",
        json={"prompt": "What is the capital of France?", "max_new_tokens": 32},
        headers={"X-API-Key": ADMIN_KEY},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert "Paris" in body["result"]
    assert body["metadata"]["model"] == "smollm2-135m-instruct"
    assert response.headers["x-request-id"]


def test_status_reports_the_loaded_default_model(server: tuple[str, subprocess.Popen[bytes]]) -> None:
    url, _ = server
    status = httpx.get(f"{url}/status", headers={"X-API-Key": ADMIN_KEY}, timeout=10).json()
    assert status["status"] == "ready"
    assert {"base_model": "smollm2-135m-instruct", "version": "base", "loaded": True} in status["cached_model_info"]


def test_sigterm_stops_the_server_cleanly(server: tuple[str, subprocess.Popen[bytes]]) -> None:
    _, process = server
    process.send_signal(signal.SIGTERM)
    # A drain that answered everything exits 0 (issue 19: uvicorn's re-raised SIGTERM made it 143).
    assert process.wait(timeout=60) == 0
    output = process.stdout.read().decode() if process.stdout else ""
    assert "Application shutdown complete" in output
    assert "Traceback" not in output


def test_sigterm_lets_requests_in_flight_finish_and_refuses_new_ones(
    shared_data_dir: Path, default_model_dir: Path
) -> None:
    headers = {"X-API-Key": ADMIN_KEY}
    body = {"prompt": "Write a long story about a lighthouse keeper.", "max_new_tokens": 48, "raw": False}
    with running_server(shared_data_dir) as (url, process), ThreadPoolExecutor(3) as pool:
        in_flight = [pool.submit(httpx.post, f"{url}/infer", json=body, headers=headers, timeout=120) for _ in range(3)]
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/status", headers=headers, timeout=5).json()["workers"][0]["batch_size"] < 3:
            assert time.monotonic() < deadline, "the three requests never ran together"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        try:
            late = httpx.post(f"{url}/infer", json=body, headers=headers, timeout=10)
            assert late.status_code == 503  # reached an open connection: refused while draining
        except httpx.TransportError:
            pass  # or the listening socket was already closed: refused all the same
        results = [future.result(timeout=120) for future in in_flight]
        assert process.wait(timeout=60) == 0
    for response in results:
        assert response.status_code == 200, response.text
        assert response.json()["metadata"]["tokens_generated"] > 0


def test_drain_past_its_timeout_answers_shutting_down_in_the_envelope(
    shared_data_dir: Path, default_model_dir: Path
) -> None:
    # Issue 19: past DRAIN_TIMEOUT uvicorn cancelled the handlers first: a bare text/plain 500 each, a
    # traceback each in the log, and the exit at about 2 x DRAIN_TIMEOUT + 5 s.
    headers = {"X-API-Key": ADMIN_KEY}
    body = {
        "prompt": "Tell a very long story.",
        "max_new_tokens": 500,
        "do_sample": True,
        "temperature": 1.5,
        "seed": 3,
    }
    with running_server(shared_data_dir, DRAIN_TIMEOUT="2") as (url, process), ThreadPoolExecutor(3) as pool:
        in_flight = [pool.submit(httpx.post, f"{url}/infer", json=body, headers=headers, timeout=120) for _ in range(3)]
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/status", headers=headers, timeout=5).json()["workers"][0]["batch_size"] < 3:
            assert time.monotonic() < deadline, "the three requests never ran together"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        results = [future.result(timeout=60) for future in in_flight]
        code = process.wait(timeout=60)
        exited_after = time.monotonic() - signalled
        output = process.stdout.read().decode() if process.stdout else ""
    cut = [r for r in results if r.status_code != 200]
    assert cut, "no request outlived the drain: make them longer"
    for response in cut:
        assert response.status_code == 503 and response.headers["content-type"].startswith("application/json")
        assert response.json()["error"]["code"] == "SHUTTING_DOWN"
    assert exited_after < 2 + 4  # DRAIN_TIMEOUT and a moment, not 2 x DRAIN_TIMEOUT + 5
    assert code == -signal.SIGTERM  # requests were cut: the exit says the drain was not clean
    assert "Traceback" not in output


def test_models_prepare_command_reports_the_folder(shared_data_dir: Path, default_model_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "inference_api", "models", "prepare"],
        env=server_env(shared_data_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert str(default_model_dir) in result.stdout


def test_bad_setting_stops_start_up_naming_the_variable(shared_data_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "inference_api", "serve"],
        env=server_env(shared_data_dir, MAX_QUEUE="lots"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "MAX_QUEUE" in result.stderr
    assert "Traceback" not in result.stderr


def test_production_without_keys_refuses_to_start(tmp_path: Path) -> None:
    env = server_env(tmp_path, ENVIRONMENT="production")
    env.pop("API_KEYS")
    result = subprocess.run(
        [sys.executable, "-m", "inference_api", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "API_KEYS" in result.stderr
