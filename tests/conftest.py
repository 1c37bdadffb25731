"""Shared fixtures: the real default model (prepared once per machine), a tiny random model with the
real tokenizer for fast tests, two LoRA adapters on it, and an app wired to them."""

from __future__ import annotations

import copy
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import redis
import yaml
from asgi_lifespan import LifespanManager

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

from inference_api.app import create_app
from inference_api.documents.embedding import Embedder
from inference_api.modeling import builtin
from inference_api.settings import ApiKeyConfig, Settings

ROOT = Path(__file__).resolve().parents[1]

ADMIN_KEY = "sk-test-admin-0123456789abcdef"
USER_KEY = "sk-test-user-0123456789abcdef"
DOCS_KEY = "sk-test-docs-only-0123456789ab"
TEST_KEYS = [
    ApiKeyConfig(name="admin", key=ADMIN_KEY, scopes=["infer", "chat", "documents", "admin"]),
    ApiKeyConfig(name="user", key=USER_KEY, scopes=["infer", "chat", "documents"]),
    ApiKeyConfig(name="docs-only", key=DOCS_KEY, scopes=["documents"]),
]
TINY_CONTEXT = 256


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """Kept between runs (ignored by git) so the default model is converted once per machine."""
    path = Path(os.environ.get("TEST_DATA_DIR", ROOT / ".cache" / "test-data"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def default_model_dir(shared_data_dir: Path) -> Path:
    return builtin.prepare_builtin(shared_data_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, default_model_dir: Path) -> Path:
    """A randomly initialised 2-layer Llama with SmolLM2's tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-model")
    tokenizer = AutoTokenizer.from_pretrained(str(default_model_dir))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=TINY_CONTEXT,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two LoRA adapters with random (non-zero) weights, so each changes the model's output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    adapters = {}
    for name, seed in (("alpha", 1), ("beta", 2)):
        torch.manual_seed(seed)
        config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        peft_model = get_peft_model(copy.deepcopy(base), config)
        folder = tmp_path_factory.mktemp(f"adapter-{name}")
        peft_model.save_pretrained(str(folder))
        adapters[name] = folder
    return adapters


@pytest.fixture
def registry_file(tmp_path: Path, tiny_model_dir: Path, tiny_adapters: dict[str, Path]) -> Path:
    path = tmp_path / "models.yaml"
    models = [
        {
            "name": "tiny",
            "path": str(tiny_model_dir),
            "description": "random 2-layer llama",
            "versions": [{"name": name, "adapter": str(folder)} for name, folder in tiny_adapters.items()],
        },
        {"name": "tiny-copy", "path": str(tiny_model_dir), "description": "the same weights again"},
    ]
    path.write_text(yaml.safe_dump({"models": models}))
    return path


def make_settings(data_dir: Path, registry_file: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": data_dir,
        "model_registry": registry_file,
        "default_model": "tiny",
        "api_keys": TEST_KEYS,
        "cache_size": 2,
        "max_new_tokens": 512,
        "max_input_tokens": 200,
        "request_timeout": 30.0,
        "drain_timeout": 5.0,
        # Tests share one key across many requests; the rate-limit tests set their own limits.
        "rate_limit": "100000/minute",
        "rate_limit_generation": "100000/minute",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path, registry_file: Path) -> Settings:
    return make_settings(tmp_path / "data", registry_file)


async def wait_ready(client: httpx.AsyncClient, seconds: float = 60.0) -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        if (await client.get("/ready")).status_code == 200:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the app did not become ready")


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with (
        LifespanManager(app, startup_timeout=120, shutdown_timeout=30),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=60) as http,
    ):
        await wait_ready(http)
        yield http


@asynccontextmanager
async def serving(settings: Settings, *, ready: bool = False) -> AsyncIterator[httpx.AsyncClient]:
    """A client on an app of its own (several may run at once, as replicas); `ready` waits for the model."""
    app = create_app(settings, warm_up=ready)
    async with (
        LifespanManager(app, startup_timeout=120, shutdown_timeout=30),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=60) as http,
    ):
        if ready:
            await wait_ready(http)
        yield http


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    """The response is the product's error envelope with this status and code, and carries its request id."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    return error  # type: ignore[no-any-return]


def auth(key: str = USER_KEY) -> dict[str, str]:
    return {"X-API-Key": key}


class RedisServer:
    """A redis-server process on a free local port, with its files in `folder`."""

    def __init__(self, folder: Path, *, persistent: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            # Fail, never skip: a missing server must not pass as a green Redis backend.
            pytest.fail(
                "redis-server is not installed; the Redis session store tests need it (apt-get install redis-server)"
            )
        self.binary = binary
        self.folder = folder
        self.persistent = persistent
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, port: int | None = None) -> None:
        """Start on a free port, or on `port` (a restart where clients already point)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # another process may take the port between choosing and binding it
            self.port = port or _free_port()
            persistence = (
                ["--save", "", "--appendonly", "yes"] if self.persistent else ["--save", "", "--appendonly", "no"]
            )
            log = (self.folder / "redis.log").open("ab")
            self.process = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder), *persistence],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            log.close()
            if self._wait_ready():
                return
            self.stop()
        raise RuntimeError(f"redis-server did not start; see {self.folder / 'redis.log'}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()  # SIGTERM: redis-server flushes the append-only file and exits
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def _wait_ready(self) -> bool:
        assert self.process is not None
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except redis.ConnectionError:
                    time.sleep(0.02)
            return False
        finally:
            client.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """One embedding model for the run (servers get it instead of loading their own)."""
    return Embedder.load("cpu")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One server for the whole run; each test keeps to its own key prefix."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()
