"""Real uvicorn servers over a socket (the tiny model, the response cache on) for the official OpenAI SDK, and a
record of the chat prompts they build, so that a test can see what the model was shown."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from inference_api.app import create_app
from inference_api.documents.embedding import Embedder
from inference_api.modeling.prompt import EncodedPrompt, Message, PromptEncoder
from inference_api.settings import Settings
from tests.conftest import make_settings
from tests.openai_api.conftest import serving

Prompts = list[list[Message]]


@pytest.fixture(scope="module")
def prompts() -> Iterator[Prompts]:
    """Every conversation put into a chat template while the module's servers run (they share this process)."""
    seen: Prompts = []
    original = PromptEncoder.encode_chat

    def recording(self: PromptEncoder, base: str, messages: list[Message]) -> EncodedPrompt:
        seen.append([dict(m) for m in messages])  # type: ignore[misc]
        return original(self, base, messages)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PromptEncoder, "encode_chat", recording)
        yield seen


def responses_settings(folder: Path, tiny_model_dir: Path, **overrides: Any) -> Settings:
    folder.mkdir(parents=True, exist_ok=True)
    registry = folder / "models.yaml"
    registry.write_text(yaml.safe_dump({"models": [{"name": "tiny", "path": str(tiny_model_dir)}]}))
    return make_settings(folder / "data", registry, **{"response_cache_mb": 1, **overrides})


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, embedder: Embedder, prompts: Prompts
) -> Iterator[str]:
    settings = responses_settings(tmp_path_factory.mktemp("responses"), tiny_model_dir)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Embedder, "load", classmethod(lambda cls, *args, **kwargs: embedder))
        with serving(create_app(settings)) as url:
            yield url
