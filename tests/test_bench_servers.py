"""bench.servers starts each program by its console script, or as `python -m` where none is installed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from bench import servers


def test_console_script_next_to_the_interpreter_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "inference-api").write_text("#!/bin/sh\n")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python3"))
    assert servers.console_command("inference-api", "inference_api") == (str(tmp_path / "inference-api"),)


def test_without_the_script_the_module_runs_under_the_interpreter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python3"))
    assert servers.console_command("inference-api", "inference_api") == (
        str(tmp_path / "python3"),
        "-m",
        "inference_api",
    )
