"""The services the app is made of, built once at start-up by the lifespan and torn down after it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from inference_api.auth.keys import ApiKeyStore, build_key_store
from inference_api.engine.service import Engine
from inference_api.modeling import builtin
from inference_api.modeling.conversion import is_prepared
from inference_api.modeling.loader import resolve_precision, worker_devices
from inference_api.modeling.prompt import PromptEncoder
from inference_api.modeling.registry import ModelRef, ModelRegistry
from inference_api.settings import Settings, SettingsError

logger = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    keys: ApiKeyStore
    registry: ModelRegistry
    encoder: PromptEncoder
    engine: Engine


def check_configuration(settings: Settings) -> tuple[ApiKeyStore, ModelRegistry]:
    """Everything that can be refused before serving: keys, the registry, the default model's source."""
    keys = build_key_store(settings)
    if settings.model_registry is not None and not settings.model_registry.is_file():
        raise SettingsError(f"MODEL_REGISTRY: {settings.model_registry} does not exist")
    try:
        registry = ModelRegistry.from_file(
            settings.registry_path, ModelRef(settings.default_model, settings.default_version)
        )
        for device in worker_devices(settings.device):
            resolve_precision(settings.dtype, device)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    except Exception as exc:  # ServiceError for an unknown default model or version
        raise SettingsError(f"DEFAULT_MODEL / DEFAULT_VERSION: {exc}") from None
    default_spec = registry.get(registry.default.base)
    if default_spec.source.kind == "builtin" and not is_prepared(builtin.builtin_folder(settings.data_dir)):
        try:
            builtin.find_builtin_gguf()
        except Exception as exc:
            raise SettingsError(str(exc)) from None
    return keys, registry


def build_services(settings: Settings) -> Services:
    keys, registry = check_configuration(settings)
    encoder = PromptEncoder(registry, settings.data_dir)
    engine = Engine.build(settings, registry, encoder)
    return Services(settings=settings, keys=keys, registry=registry, encoder=encoder, engine=engine)
