"""Bodies of the model-management routes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictStr


class ModelInfo(BaseModel):
    base_model: str
    versions: list[str]
    description: str
    loaded: bool = Field(description="Whether any version of this model is in the cache.")
    loaded_versions: list[str]


class ModelList(BaseModel):
    models: list[ModelInfo]


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: StrictStr | None = Field(default=None, description="Adapter version to load; `base` when absent.")


class LoadResult(BaseModel):
    base_model: str
    version: str
    loaded: bool
    load_time: float


class UnloadResult(BaseModel):
    base_model: str
    unloaded_versions: int
