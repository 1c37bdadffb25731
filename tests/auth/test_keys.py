"""API keys: the store, key files, and the development key made when none is configured."""

from __future__ import annotations

import hashlib
import json
import logging
import stat
from pathlib import Path

import pytest
import yaml

from inference_api.auth.keys import DEV_KEY_FILE, ApiKeyStore, Principal, build_key_store, load_key_file
from inference_api.settings import ALL_SCOPES, ApiKeyConfig, Settings, SettingsError

ALICE_KEY = "sk-alice-0123456789abcdef"
BOB_KEY = "sk-bob-0123456789abcdefgh"


def settings_for(tmp_path: Path, **values: object) -> Settings:
    values.setdefault("data_dir", tmp_path / "data")
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


# --- the store ---------------------------------------------------------------------------------


def test_right_key_gives_the_principal_and_wrong_key_none() -> None:
    store = ApiKeyStore(
        [
            ApiKeyConfig(name="alice", key=ALICE_KEY, scopes=["infer", "admin"]),
            ApiKeyConfig(name="bob", key=BOB_KEY),
        ]
    )
    assert len(store) == 2
    assert store.authenticate(ALICE_KEY) == Principal("alice", frozenset({"infer", "admin"}))
    assert store.authenticate(BOB_KEY) == Principal("bob", frozenset({"infer", "chat", "documents"}))
    for wrong in ("", ALICE_KEY[:-1], ALICE_KEY + "x", ALICE_KEY.upper(), sha256(ALICE_KEY)):
        assert store.authenticate(wrong) is None


def test_key_sha256_entries_authenticate_the_key() -> None:
    store = ApiKeyStore(
        [
            ApiKeyConfig(name="hashed", key_sha256=sha256(ALICE_KEY), scopes=["documents"]),
            ApiKeyConfig(name="upper", key_sha256=sha256(BOB_KEY).upper()),
        ]
    )
    assert store.authenticate(ALICE_KEY) == Principal("hashed", frozenset({"documents"}))
    assert store.authenticate(BOB_KEY) is not None
    assert store.authenticate(BOB_KEY).name == "upper"  # type: ignore[union-attr]
    # The digest itself is not a key.
    assert store.authenticate(sha256(ALICE_KEY)) is None


def test_principal_carries_no_key() -> None:
    store = ApiKeyStore([ApiKeyConfig(name="alice", key=ALICE_KEY)])
    principal = store.authenticate(ALICE_KEY)
    assert principal is not None
    assert ALICE_KEY not in repr(principal)
    assert ALICE_KEY not in repr(ApiKeyConfig(name="alice", key=ALICE_KEY))


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(SettingsError, match=r"API_KEYS.*duplicate.*alice"):
        ApiKeyStore([ApiKeyConfig(name="alice", key=ALICE_KEY), ApiKeyConfig(name="alice", key=BOB_KEY)])


def test_empty_store_authenticates_nobody() -> None:
    assert ApiKeyStore([]).authenticate(ALICE_KEY) is None


# --- build_key_store ---------------------------------------------------------------------------


def test_configured_keys_are_used_and_no_dev_key_is_made(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, api_keys=[ApiKeyConfig(name="alice", key=ALICE_KEY)])
    store = build_key_store(settings)
    assert len(store) == 1
    assert store.authenticate(ALICE_KEY) is not None
    assert not (tmp_path / "data" / DEV_KEY_FILE).exists()


def test_production_without_keys_is_refused(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, environment="production")
    with pytest.raises(SettingsError, match="API_KEYS"):
        build_key_store(settings)
    assert not (tmp_path / "data" / DEV_KEY_FILE).exists()


def test_production_with_keys_starts(tmp_path: Path) -> None:
    settings = settings_for(
        tmp_path, environment="production", api_keys=[ApiKeyConfig(name="alice", key_sha256=sha256(ALICE_KEY))]
    )
    assert build_key_store(settings).authenticate(ALICE_KEY) is not None


def test_development_without_keys_makes_a_private_dev_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = settings_for(tmp_path)
    store = build_key_store(settings)

    path = tmp_path / "data" / DEV_KEY_FILE
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = path.read_text().strip()
    assert len(key) >= 16
    assert len(store) == 1
    assert store.authenticate(key) == Principal("development", frozenset(ALL_SCOPES))
    assert set(ALL_SCOPES) == {"infer", "chat", "documents", "admin"}

    # Where to find it is logged; the key itself never is.
    assert str(path) in caplog.text
    assert key not in caplog.text
    for record in caplog.records:
        assert key not in record.getMessage()
        assert key not in repr(record.args)


def test_dev_key_is_reused_on_the_next_start(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    build_key_store(settings)
    path = tmp_path / "data" / DEV_KEY_FILE
    first = path.read_text()
    store = build_key_store(settings)
    assert path.read_text() == first
    assert store.authenticate(first.strip()) is not None


def test_dev_keys_differ_between_data_dirs(tmp_path: Path) -> None:
    build_key_store(settings_for(tmp_path, data_dir=tmp_path / "one"))
    build_key_store(settings_for(tmp_path, data_dir=tmp_path / "two"))
    assert (tmp_path / "one" / DEV_KEY_FILE).read_text() != (tmp_path / "two" / DEV_KEY_FILE).read_text()


def test_empty_dev_key_file_is_a_clear_error_or_replaced(tmp_path: Path) -> None:
    path = tmp_path / "data" / DEV_KEY_FILE
    path.parent.mkdir(parents=True)
    path.write_text("\n")
    try:
        store = build_key_store(settings_for(tmp_path))
    except SettingsError as exc:
        assert DEV_KEY_FILE in str(exc)
    else:
        key = path.read_text().strip()
        assert len(key) >= 16
        assert store.authenticate(key) is not None


# --- API_KEYS_FILE -----------------------------------------------------------------------------

ENTRIES = [
    {"name": "alice", "key": ALICE_KEY, "scopes": ["infer", "admin"]},
    {"name": "bob", "key_sha256": sha256(BOB_KEY)},
]


@pytest.mark.parametrize(
    ("filename", "content"),
    [
        ("keys.yaml", yaml.safe_dump(ENTRIES)),
        ("keys.yaml", yaml.safe_dump({"keys": ENTRIES})),
        ("keys.json", json.dumps(ENTRIES)),
        ("keys.json", json.dumps({"keys": ENTRIES}, indent=2)),
    ],
    ids=["yaml-list", "yaml-mapping", "json-list", "json-mapping"],
)
def test_api_keys_file_loads(tmp_path: Path, filename: str, content: str) -> None:
    path = tmp_path / filename
    path.write_text(content)
    store = build_key_store(settings_for(tmp_path, api_keys_file=path))
    assert len(store) == 2
    assert store.authenticate(ALICE_KEY) == Principal("alice", frozenset({"infer", "admin"}))
    assert store.authenticate(BOB_KEY) == Principal("bob", frozenset({"infer", "chat", "documents"}))
    assert not (tmp_path / "data" / DEV_KEY_FILE).exists()


def test_api_keys_file_adds_to_api_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump([{"name": "bob", "key": BOB_KEY}]))
    settings = settings_for(tmp_path, api_keys=[ApiKeyConfig(name="alice", key=ALICE_KEY)], api_keys_file=path)
    store = build_key_store(settings)
    assert {store.authenticate(ALICE_KEY).name, store.authenticate(BOB_KEY).name} == {"alice", "bob"}  # type: ignore[union-attr]


def test_same_name_in_api_keys_and_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump([{"name": "alice", "key": BOB_KEY}]))
    settings = settings_for(tmp_path, api_keys=[ApiKeyConfig(name="alice", key=ALICE_KEY)], api_keys_file=path)
    with pytest.raises(SettingsError, match="duplicate"):
        build_key_store(settings)


def test_production_with_only_a_key_file_starts(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump(ENTRIES))
    store = build_key_store(settings_for(tmp_path, environment="production", api_keys_file=path))
    assert store.authenticate(ALICE_KEY) is not None


@pytest.mark.parametrize(
    "content",
    [
        "- name: alice\n  key: [unclosed\n",  # not YAML
        "",  # empty
        "just a string\n",
        "{}\n",  # a mapping without `keys`
        json.dumps({"entries": ENTRIES}),
        json.dumps([{"name": "alice"}]),  # neither key nor key_sha256
        json.dumps([{"name": "alice", "key": ALICE_KEY, "key_sha256": sha256(ALICE_KEY)}]),
        json.dumps([{"name": "alice", "key": ALICE_KEY, "scopes": ["root"]}]),
        json.dumps([{"name": "alice", "key": "short"}]),
        json.dumps([{"name": "", "key": ALICE_KEY}]),
    ],
)
def test_bad_api_keys_file_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(content)
    with pytest.raises(SettingsError) as caught:
        build_key_store(settings_for(tmp_path, api_keys_file=path))
    message = str(caught.value)
    assert "API_KEYS_FILE" in message
    assert ALICE_KEY not in message


def test_missing_api_keys_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(SettingsError, match="API_KEYS_FILE"):
        build_key_store(settings_for(tmp_path, api_keys_file=path))
    with pytest.raises(SettingsError, match="API_KEYS_FILE"):
        load_key_file(path)
