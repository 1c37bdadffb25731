"""Two replicas sharing Redis: a response made on one is continued and read on the other."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference_api.app import create_app
from tests.conftest import RedisServer
from tests.openai_api.conftest import sdk, serving
from tests.responses.conftest import Prompts, responses_settings


def test_a_conversation_moves_between_replicas(
    tmp_path: Path, tiny_model_dir: Path, redis_server: RedisServer, prompts: Prompts
) -> None:
    settings = [
        responses_settings(tmp_path / name, tiny_model_dir, redis_url=redis_server.url, response_cache_mb=0)
        for name in ("a", "b")
    ]
    greedy = {"model": "tiny", "temperature": 0, "max_output_tokens": 6}
    with serving(create_app(settings[0])) as first, serving(create_app(settings[1])) as second:
        made = sdk(first).responses.create(input="My name is Ada.", **greedy)  # type: ignore[call-overload]
        prompts.clear()
        later = sdk(second).responses.create(input="Who am I?", previous_response_id=made.id, **greedy)  # type: ignore[call-overload]
        assert prompts[-1][-3:] == [
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": made.output_text},
            {"role": "user", "content": "Who am I?"},
        ]
        assert sdk(first).responses.retrieve(later.id).output_text == later.output_text
        assert sdk(second).responses.retrieve(made.id).output_text == made.output_text
        sdk(first).responses.delete(later.id)
        with pytest.raises(Exception) as caught:
            sdk(second).responses.retrieve(later.id)
        assert getattr(caught.value, "status_code", None) == 404
