"""Settings from the environment, a `.env` file and CONFIG_FILE; bad values refused with the variable named."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from inference_api import cli
from inference_api.settings import Settings, SettingsError, load_settings

SECRET = "sk-settings-test-0123456789"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No stray variable and no `.env` from the machine running the tests."""
    for name in [*Settings.model_fields, "config_file"]:
        monkeypatch.delenv(name.upper(), raising=False)
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def refused(**overrides: object) -> str:
    with pytest.raises(SettingsError) as caught:
        load_settings(**overrides)
    return str(caught.value)


def test_defaults_without_any_configuration() -> None:
    settings = load_settings()
    assert settings.port == 8000
    assert settings.cache_size == 2
    assert settings.api_keys == []
    assert settings.environment == "development"
    assert settings.registry_path == Path("data") / "models.yaml"


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9123")
    monkeypatch.setenv("CACHE_SIZE", "5")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    monkeypatch.setenv("DEVICE", "CUDA:1")
    settings = load_settings()
    assert settings.port == 9123
    assert settings.cache_size == 5
    assert settings.log_level == "DEBUG"
    assert settings.device == "cuda:1"


def test_api_keys_json_list_with_key(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = [{"name": "alice", "key": SECRET, "scopes": ["infer", "admin"]}, {"name": "bob", "key": SECRET + "-b"}]
    monkeypatch.setenv("API_KEYS", json.dumps(keys))
    settings = load_settings()
    assert [k.name for k in settings.api_keys] == ["alice", "bob"]
    assert settings.api_keys[0].scopes == ["infer", "admin"]
    assert settings.api_keys[0].digest() == hashlib.sha256(SECRET.encode()).hexdigest()
    assert settings.api_keys[1].scopes == ["infer", "chat", "documents"]  # the default scopes
    assert SECRET not in repr(settings)


def test_api_keys_json_list_with_key_sha256(monkeypatch: pytest.MonkeyPatch) -> None:
    digest = hashlib.sha256(SECRET.encode()).hexdigest()
    monkeypatch.setenv("API_KEYS", json.dumps([{"name": "hashed", "key_sha256": digest.upper()}]))
    (key,) = load_settings().api_keys
    assert key.key is None
    assert key.digest() == digest


def test_dotenv_file_is_read_and_environment_wins(monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    (clean_env / ".env").write_text("PORT=9200\nCACHE_SIZE=7\n")
    monkeypatch.setenv("CACHE_SIZE", "3")
    settings = load_settings()
    assert settings.port == 9200
    assert settings.cache_size == 3


def test_config_file_supplies_values_and_environment_overrides(
    monkeypatch: pytest.MonkeyPatch, clean_env: Path
) -> None:
    config = clean_env / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "port": 9300,
                "CACHE_SIZE": 4,  # upper-case keys work too (.env.example promises it)
                "log_level": "warning",
                "api_keys": [{"name": "from-yaml", "key": SECRET}],
            }
        )
    )
    monkeypatch.setenv("CONFIG_FILE", str(config))
    settings = load_settings()
    assert (settings.port, settings.cache_size, settings.log_level) == (9300, 4, "WARNING")
    assert [k.name for k in settings.api_keys] == ["from-yaml"]

    monkeypatch.setenv("PORT", "9301")
    monkeypatch.setenv("LOG_LEVEL", "ERROR")
    settings = load_settings()
    assert (settings.port, settings.cache_size, settings.log_level) == (9301, 4, "ERROR")


def test_dotenv_overrides_config_file(monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    config = clean_env / "config.yaml"
    config.write_text("port: 9400\ncache_size: 6\n")
    (clean_env / ".env").write_text("PORT=9401\n")
    monkeypatch.setenv("CONFIG_FILE", str(config))
    settings = load_settings()
    assert (settings.port, settings.cache_size) == (9401, 6)


def test_explicit_overrides_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9500")
    assert load_settings(port=9501).port == 9501


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("PORT", "0"),
        ("CACHE_SIZE", "0"),
        ("CACHE_SIZE", "many"),
        ("DEVICE", "tpu"),
        ("DEVICE", "cuda:x"),
        ("LOG_LEVEL", "loud"),
        ("ENVIRONMENT", "staging"),
        ("DTYPE", "int4"),
        ("MAX_QUEUE", "0"),
        ("REQUEST_TIMEOUT", "0"),
        ("API_KEY_HEADER", "X API Key"),
    ],
)
def test_invalid_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    message = refused()
    assert message.startswith("invalid settings: ")
    assert f"{variable}: " in message
    assert "; " not in message  # only the offending variable is reported


def test_every_bad_variable_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "abc")
    monkeypatch.setenv("CACHE_SIZE", "0")
    message = refused()
    assert "PORT: " in message and "CACHE_SIZE: " in message


def test_api_key_with_both_key_and_key_sha256_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    digest = hashlib.sha256(SECRET.encode()).hexdigest()
    monkeypatch.setenv("API_KEYS", json.dumps([{"name": "both", "key": SECRET, "key_sha256": digest}]))
    message = refused()
    assert "API_KEYS[0]" in message
    assert "exactly one of 'key' or 'key_sha256'" in message
    assert SECRET not in message and digest not in message


def test_api_key_with_neither_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEYS", json.dumps([{"name": "none"}]))
    assert "API_KEYS[0]" in refused()


def test_short_api_key_is_refused_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEYS", json.dumps([{"name": "short", "key": "tiny-secret"}]))
    message = refused()
    assert "API_KEYS[0][key]" in message
    assert "tiny-secret" not in message


def test_unknown_scope_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEYS", json.dumps([{"name": "x", "key": SECRET, "scopes": ["root"]}]))
    message = refused()
    assert "API_KEYS[0][scopes][0]" in message


def test_api_keys_that_are_not_json_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEYS", "alice:" + SECRET)
    message = refused()
    assert "api_keys" in message.lower()
    assert SECRET not in message


def test_api_keys_that_are_not_json_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEYS", "alice:" + SECRET)
    assert "API_KEYS" in refused()


def test_invalid_value_in_config_file_names_the_variable(monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    config = clean_env / "config.yaml"
    config.write_text("port: 99999\n")
    monkeypatch.setenv("CONFIG_FILE", str(config))
    assert "PORT: " in refused()


def test_missing_config_file_is_refused(monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    missing = clean_env / "nowhere.yaml"
    monkeypatch.setenv("CONFIG_FILE", str(missing))
    message = refused()
    assert "CONFIG_FILE" in message
    assert str(missing) in message


def test_config_file_that_is_a_directory_is_refused(monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    monkeypatch.setenv("CONFIG_FILE", str(clean_env))
    assert "CONFIG_FILE" in refused()


def test_malformed_config_file_is_refused_naming_the_file(monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    config = clean_env / "broken.yaml"
    config.write_text("port: [1\n")
    monkeypatch.setenv("CONFIG_FILE", str(config))
    assert "broken.yaml" in refused()


def test_config_file_that_is_not_a_mapping_names_config_file(monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    config = clean_env / "list.yaml"
    config.write_text("- port\n- cache_size\n")
    monkeypatch.setenv("CONFIG_FILE", str(config))
    message = refused()
    assert "CONFIG_FILE" in message or "list.yaml" in message


def test_cli_refuses_bad_settings_with_exit_code_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PORT", "abc")
    assert cli.main(["serve"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("inference-api: ")
    assert "PORT" in captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""


def test_cli_refuses_a_bad_port_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--port", "70000"]) == 2
    assert "PORT" in capsys.readouterr().err


def test_cli_refuses_production_without_keys_before_serving(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], clean_env: Path
) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("DATA_DIR", str(clean_env / "data"))
    # configure_logging would replace the root logger's handlers (pytest's included).
    monkeypatch.setattr(cli, "configure_logging", lambda *args, **kwargs: None)

    def no_server(*args: object, **kwargs: object) -> None:
        raise AssertionError("the server must not start")

    monkeypatch.setattr("uvicorn.run", no_server)
    assert cli.main(["serve"]) == 2
    assert "API_KEYS" in capsys.readouterr().err
