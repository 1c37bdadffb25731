"""A real uvicorn server over a socket, serving the tiny model, for the official OpenAI SDK to talk to."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
import yaml
from fastapi import FastAPI
from openai import OpenAI

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from inference_api.app import create_app
from inference_api.documents.embedding import Embedder
from tests.conftest import USER_KEY, make_settings
from tests.test_server import free_port


@contextlib.contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """Run `app` on uvicorn in a thread (its own event loop) until the block ends; yields the base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert thread.is_alive(), "the server stopped during start-up"
            assert time.monotonic() < deadline, "the server never became ready"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            time.sleep(0.1)
        yield url
    finally:
        server.should_exit = True
        thread.join(60)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_adapters: dict[str, Path], embedder: Embedder
) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("openai")
    registry = folder / "models.yaml"
    versions = [{"name": name, "adapter": str(path)} for name, path in tiny_adapters.items()]
    registry.write_text(
        yaml.safe_dump({"models": [{"name": "tiny", "path": str(tiny_model_dir), "versions": versions}]})
    )
    settings = make_settings(folder / "data", registry)
    with pytest.MonkeyPatch.context() as patch:
        # The session's embedding model, instead of each app loading its own.
        patch.setattr(Embedder, "load", classmethod(lambda cls, *args, **kwargs: embedder))
        with serving(create_app(settings)) as url:
            yield url


def sdk(url: str, key: str = USER_KEY) -> OpenAI:
    """The official client, unchanged, pointed at the server; no retries, so a failure shows at once."""
    return OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)
