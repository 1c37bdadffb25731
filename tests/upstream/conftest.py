"""Upstream replicas for the gateway tests: our own server (a real OpenAI-compatible server) in processes of its own,
serving the tiny model over real sockets, so that one can be killed mid-stream and started again on its port; and
gateways (the app under test, on uvicorn over a socket) whose registry points at them."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from inference_api.app import create_app
from inference_api.documents.embedding import Embedder
from tests.conftest import ADMIN_KEY, make_settings
from tests.openai_api.conftest import serving
from tests.test_server import free_port, server_env

UPSTREAM_KEY_ENV = "TEST_UPSTREAM_KEY"


class Replica:
    """Our server as an upstream replica: a process on a fixed port, which a test may kill and start again."""

    def __init__(self, folder: Path, registry: Path) -> None:
        self.folder = folder
        self.registry = registry
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.root}/v1"

    def start(self) -> None:
        env = server_env(
            self.folder,
            MODEL_REGISTRY=str(self.registry),
            DEFAULT_MODEL="tiny",
            MAX_INPUT_TOKENS="200",
            RATE_LIMIT_GENERATION="100000/minute",
        )
        self.log = (self.folder / "server.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "inference_api", "serve", "--port", str(self.port)],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, seconds: float = 120) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, self.output()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.root}/ready", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise AssertionError(f"replica never became ready:\n{self.output()}")

    def kill(self) -> None:
        """SIGKILL: the replica vanishes mid-whatever, as a crashed pod does."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.log.close()

    def output(self) -> str:
        return (self.folder / "server.log").read_text(errors="replace")[-3000:]

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.root}{path}", headers={"X-API-Key": ADMIN_KEY}, timeout=10)

    def metric(self, name: str) -> float:
        """The sum of a metric's samples on this replica's /prometheus."""
        text = self.get("/prometheus").text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


@pytest.fixture(scope="package")
def replica_registry(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    path = tmp_path_factory.mktemp("replica-registry") / "models.yaml"
    path.write_text(yaml.safe_dump({"models": [{"name": "tiny", "path": str(tiny_model_dir)}]}))
    return path


@pytest.fixture(scope="package")
def replicas(tmp_path_factory: pytest.TempPathFactory, replica_registry: Path) -> Iterator[list[Replica]]:
    """Two replicas of our server serving the tiny model, started side by side."""
    started = [Replica(tmp_path_factory.mktemp(f"replica-{i}"), replica_registry) for i in range(2)]
    for replica in started:
        replica.start()
    try:
        for replica in started:
            replica.wait_ready()
        yield started
    finally:
        for replica in started:
            replica.kill()


def fleet_registry(
    folder: Path,
    urls: list[str],
    tokenizer: Path | None,
    *,
    model: str = "tiny",
    key_env: str | None = UPSTREAM_KEY_ENV,
    **entry: Any,
) -> Path:
    upstream: dict[str, Any] = {"urls": urls, "model": model}
    if key_env is not None:
        upstream["api_key_env"] = key_env
    if tokenizer is not None:
        upstream["tokenizer"] = str(tokenizer)
    path = folder / "gateway-models.yaml"
    model = {"name": "fleet", "description": "the tiny model on two replicas", "upstream": upstream, **entry}
    path.write_text(yaml.safe_dump({"models": [model]}))
    return path


@contextlib.contextmanager
def gateway(folder: Path, registry: Path | None, embedder: Embedder, **overrides: object) -> Iterator[str]:
    """Our service as the gateway, on uvicorn over a socket; yields its base URL."""
    values: dict[str, object] = {"default_model": "fleet", "upstream_health_interval": 0.3, **overrides}
    values["model_registry"] = registry  # None: only BACKEND=openai's default model
    settings = make_settings(folder / "data", folder / "unused.yaml", **values)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(UPSTREAM_KEY_ENV, ADMIN_KEY)
        patch.setattr(Embedder, "load", classmethod(lambda cls, *args, **kwargs: embedder))
        with serving(create_app(settings)) as url:
            yield url


def sse_events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event name, data) of a Server-Sent Events response, as they arrive."""
    name = "message"
    for line in response.iter_lines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data = line[5:].strip()
            if data != "[DONE]":
                yield name, json.loads(data)
            name = "message"


def upstream_status(url: str, headers: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The gateway's view of its replicas (from /status), by URL."""
    status = httpx.get(f"{url}/status", headers=headers, timeout=10).json()
    return {r["url"]: r for fleet in status["upstreams"] for r in fleet["replicas"]}
