"""API keys: loaded from settings or a file, held only as SHA-256 digests, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import TypeAdapter, ValidationError

from inference_api.settings import ALL_SCOPES, MIN_KEY_LENGTH, ApiKeyConfig, Settings, SettingsError

logger = logging.getLogger(__name__)

DEV_KEY_FILE = "dev-api-key"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the key's name (never the key) and what it may do."""

    name: str
    scopes: frozenset[str]
    credential: Literal["api_key", "jwt"] = "api_key"


@dataclass(frozen=True)
class KeyLimits:
    """A key's own limits; None: the service-wide default (RATE_LIMIT, TOKENS_PER_MINUTE, TOKENS_PER_DAY)."""

    rate_limit: str | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None


class ApiKeyStore:
    def __init__(self, keys: list[ApiKeyConfig]) -> None:
        names = [k.name for k in keys]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise SettingsError(f"API_KEYS: duplicate key names {sorted(duplicates)}")
        self._entries = [(bytes.fromhex(k.digest()), Principal(k.name, frozenset(k.scopes))) for k in keys]
        self._by_name = {principal.name: (digest, principal) for digest, principal in self._entries}
        self._limits = {k.name: KeyLimits(k.rate_limit, k.tokens_per_minute, k.tokens_per_day) for k in keys}

    def __len__(self) -> int:
        return len(self._entries)

    def authenticate(self, presented: str) -> Principal | None:
        digest = hashlib.sha256(presented.encode()).digest()
        found: Principal | None = None
        # Compare against every entry, so timing says nothing about which (or whether one) matched.
        for expected, principal in self._entries:
            if hmac.compare_digest(digest, expected):
                found = principal
        return found

    def lookup(self, name: str) -> tuple[bytes, Principal] | None:
        """The SHA-256 digest and principal of the key configured under `name` now, if any."""
        return self._by_name.get(name)

    def limits(self, name: str) -> KeyLimits:
        return self._limits.get(name, KeyLimits())


def load_key_file(path: Path) -> list[ApiKeyConfig]:
    """YAML or JSON: a list of key entries, or a mapping with a `keys` list."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"API_KEYS_FILE: cannot read {path}: {type(exc).__name__}") from None
    if isinstance(raw, dict):
        raw = raw.get("keys")
    try:
        return TypeAdapter(list[ApiKeyConfig]).validate_python(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise SettingsError(f"API_KEYS_FILE {path}: {problems}") from None


def build_key_store(settings: Settings) -> ApiKeyStore:
    """Keys from API_KEYS and API_KEYS_FILE; with none, a development key or (production) a refusal."""
    keys = list(settings.api_keys)
    if settings.api_keys_file is not None:
        keys += load_key_file(settings.api_keys_file)
    if not keys:
        if settings.environment == "production":
            raise SettingsError(
                "API_KEYS / API_KEYS_FILE: no API key configured, and ENVIRONMENT=production refuses to "
                "start without one"
            )
        keys.append(_development_key(settings.data_dir))
    return ApiKeyStore(keys)


def _development_key(data_dir: Path) -> ApiKeyConfig:
    """One key with every scope, kept in DATA_DIR/dev-api-key so it survives restarts."""
    path = data_dir / DEV_KEY_FILE
    key = path.read_text().strip() if path.is_file() else ""
    if len(key) < MIN_KEY_LENGTH:  # missing, or emptied / mangled by hand: make a fresh one
        data_dir.mkdir(parents=True, exist_ok=True)
        key = "sk-dev-" + secrets.token_urlsafe(24)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key + "\n")
    # The key itself is never logged: only where to find it.
    logger.warning(
        "no API key configured: using the development key in %s (all scopes); "
        "set API_KEYS or API_KEYS_FILE, and ENVIRONMENT=production to refuse this",
        path,
    )
    return ApiKeyConfig(name="development", key=key, scopes=list(ALL_SCOPES))
