"""Routing over an upstream model's replicas, the registry's upstream entries, and the settings of BACKEND=openai."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from inference_api.errors import ErrorCode, ServiceError
from inference_api.modeling.registry import ModelRef, ModelRegistry
from inference_api.services import check_configuration
from inference_api.settings import SettingsError, load_settings
from inference_api.upstream.backend import _error_from
from inference_api.upstream.replicas import ReplicaSet


def fleet(tmp_path: Path, urls: list[str], **upstream: object) -> ModelRegistry:
    path = tmp_path / "models.yaml"
    entry = {
        "name": "fleet",
        "upstream": {"urls": urls, "model": "served-name", **upstream},
        "versions": [{"name": "support-v1", "upstream_model": "support-lora"}],
    }
    path.write_text(yaml.safe_dump({"models": [entry]}))
    return ModelRegistry.from_file(path, ModelRef("fleet"))


def replicas(tmp_path: Path, count: int = 3, max_in_flight: int = 2) -> ReplicaSet:
    registry = fleet(tmp_path, [f"http://r{i}:8000/v1" for i in range(count)], max_in_flight=max_in_flight)
    return ReplicaSet.of(registry.get("fleet"), None)


def test_the_registry_names_what_the_upstream_serves(tmp_path: Path) -> None:
    registry = fleet(tmp_path, ["http://a:8000/v1"])
    spec = registry.get("fleet")
    assert spec.versions == ["base", "support-v1"]
    assert (spec.upstream_model("base"), spec.upstream_model("support-v1")) == ("served-name", "support-lora")
    assert registry.upstream("fleet") is not None and registry.upstream("smollm2-135m-instruct") is None
    registry.resolve(ModelRef("fleet", "support-v1"))
    with pytest.raises(ServiceError):
        registry.resolve(ModelRef("fleet", "other"))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"upstream": {"urls": ["ftp://a/v1"], "model": "m"}}, "must start with http"),
        ({"upstream": {"urls": [], "model": "m"}}, "at least 1"),
        ({"upstream": {"urls": ["http://a/v1", "http://a/v1"], "model": "m"}}, "listed twice"),
        ({"upstream": {"urls": ["http://a/v1"], "model": "m"}, "path": "/x"}, "exactly one of"),
        (
            {"upstream": {"urls": ["http://a/v1"], "model": "m"}, "versions": [{"name": "v", "adapter": "/a"}]},
            "needs upstream_model",
        ),
    ],
)
def test_bad_upstream_entries_are_refused(tmp_path: Path, entry: dict[str, object], message: str) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": [{"name": "fleet", **entry}]}))
    with pytest.raises(ValueError, match=message):
        ModelRegistry.from_file(path, ModelRef("smollm2-135m-instruct"))


def test_least_outstanding_then_turns_among_equals(tmp_path: Path) -> None:
    fleet_ = replicas(tmp_path)
    first = fleet_.pick()
    first.in_flight = 1
    second = fleet_.pick()
    assert second is not first
    second.in_flight = 1
    third = fleet_.pick()
    assert third not in (first, second)
    third.in_flight = 1
    # All at one: each gets its turn rather than the first always.
    picked = set()
    for _ in range(3):
        replica = fleet_.pick()
        picked.add(replica.url)
    assert len(picked) > 1


def test_a_session_sticks_to_its_replica_while_it_is_healthy_and_has_room(tmp_path: Path) -> None:
    fleet_ = replicas(tmp_path)
    home = fleet_.pick("session-1")
    home.in_flight = 1  # busier than the others: the session stays anyway (its prefix cache is there)
    assert fleet_.pick("session-1") is home
    home.healthy = False
    moved = fleet_.pick("session-1")
    assert moved is not home
    home.healthy = True
    assert fleet_.pick("session-1") is moved  # and it stays on its new replica
    moved.in_flight = 2  # full
    assert fleet_.pick("session-1") is not moved


def test_full_is_overloaded_and_down_is_not_ready_both_with_retry_after(tmp_path: Path) -> None:
    fleet_ = replicas(tmp_path, count=2, max_in_flight=1)
    for replica in fleet_.replicas:
        replica.in_flight = 1
    with pytest.raises(ServiceError) as full:
        fleet_.pick()
    assert full.value.code is ErrorCode.OVERLOADED and full.value.retry_after
    for replica in fleet_.replicas:
        replica.healthy = False
    with pytest.raises(ServiceError) as down:
        fleet_.pick()
    assert down.value.code is ErrorCode.MODEL_NOT_READY and down.value.retry_after


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (
            400,
            b'{"error": {"message": "This model\'s maximum context length is 4096 tokens."}}',
            "TOKEN_LIMIT_EXCEEDED",
        ),
        (
            400,
            b'{"object": "error", "message": "The decoder prompt is longer than the maximum model length of 4096"}',
            "TOKEN_LIMIT_EXCEEDED",
        ),
        (400, b'{"error": {"message": "x", "code": "context_length_exceeded"}}', "TOKEN_LIMIT_EXCEEDED"),
        (400, b'{"error": {"message": "temperature must be >= 0"}}', "VALIDATION_ERROR"),
        (404, b'{"error": {"message": "The model `x` does not exist."}}', "MODEL_NOT_READY"),
        (429, b"", "OVERLOADED"),
        (401, b"<html>nope</html>", "DEPENDENCY_UNAVAILABLE"),
        (502, b"<html>bad gateway</html>", "DEPENDENCY_UNAVAILABLE"),
    ],
)
def test_upstream_refusals_become_our_codes_without_their_body(status: int, body: bytes, code: str) -> None:
    error = _error_from(status, body, "http://a/v1")
    assert error.code.value == code
    assert "<html>" not in error.message
    assert error.status != 500


def test_backend_openai_needs_its_urls() -> None:
    with pytest.raises(SettingsError, match="UPSTREAM_URL"):
        load_settings(_env_file=None, backend="openai")
    with pytest.raises(SettingsError, match="UPSTREAM_URL"):
        load_settings(_env_file=None, backend="openai", upstream_url="vllm:8000")
    settings = load_settings(_env_file=None, backend="openai", upstream_url=" http://a:8000/v1/ , http://b:8000/v1")
    assert settings.upstream_urls == ["http://a:8000/v1", "http://b:8000/v1"]


def test_an_upstream_key_variable_that_is_not_set_stops_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "models.yaml"
    upstream = {"urls": ["http://a:8000/v1"], "model": "m", "api_key_env": "TEST_FLEET_KEY"}
    path.write_text(yaml.safe_dump({"models": [{"name": "fleet", "upstream": upstream}]}))
    settings = load_settings(_env_file=None, model_registry=path, data_dir=tmp_path)
    monkeypatch.delenv("TEST_FLEET_KEY", raising=False)
    with pytest.raises(SettingsError, match="TEST_FLEET_KEY"):
        check_configuration(settings)
    monkeypatch.setenv("TEST_FLEET_KEY", "sk-upstream")
    _, registry = check_configuration(settings)
    assert registry.upstream("fleet") is not None
