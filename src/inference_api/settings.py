"""Service configuration: environment variables, an optional `.env`, and a YAML file named by CONFIG_FILE."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)
from pydantic_settings import (
    SettingsError as PydanticSettingsError,
)

Scope = Literal["infer", "chat", "documents", "admin"]
ALL_SCOPES: tuple[Scope, ...] = ("infer", "chat", "documents", "admin")
DEFAULT_SCOPES: tuple[Scope, ...] = ("infer", "chat", "documents")
MIN_KEY_LENGTH = 16


def check_rate_limit(value: str) -> str:
    """Accept the `limits` notation ("60/minute", "10 per second; 1000/day"), refusing anything it cannot parse."""
    from limits import parse_many

    try:
        parse_many(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a rate limit such as '60/minute' or '10/second;1000/day'") from None
    return value


class ApiKeyConfig(BaseModel):
    """One configured API key: a name for logs and ownership, the key (or its SHA-256), and scopes."""

    name: str = Field(min_length=1, max_length=128)
    key: str | None = Field(default=None, min_length=MIN_KEY_LENGTH, repr=False)
    key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$", repr=False)
    scopes: list[Scope] = Field(default_factory=lambda: list(DEFAULT_SCOPES))
    # Per-key overrides of RATE_LIMIT and the optional generated-token budgets (None: the defaults).
    rate_limit: str | None = None
    tokens_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_day: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_secret(self) -> ApiKeyConfig:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError(f"API key {self.name!r} needs exactly one of 'key' or 'key_sha256'")
        return self

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit(cls, value: str | None) -> str | None:
        return None if value is None else check_rate_limit(value)

    def digest(self) -> str:
        if self.key is not None:
            return hashlib.sha256(self.key.encode()).hexdigest()
        assert self.key_sha256 is not None
        return self.key_sha256.lower()


class Settings(BaseSettings):
    """Every setting of the service; names are the environment variables, upper-cased."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    environment: Literal["development", "production"] = "development"
    data_dir: Path = Path("data")

    default_model: str = "smollm2-135m-instruct"
    default_version: str = "base"
    model_registry: Path | None = None
    cache_size: int = Field(default=2, ge=1, le=64)
    device: str = "auto"
    # "openai": the default model is served by an OpenAI-compatible fleet (vLLM) at UPSTREAM_URL; no local weights.
    backend: Literal["local", "openai"] = "local"
    upstream_url: str | None = None  # comma-separated /v1 base URLs of the upstream's replicas
    upstream_model: str | None = None  # the name the upstream serves the default model by (default: DEFAULT_MODEL)
    upstream_api_key: SecretStr | None = None
    upstream_tokenizer: Path | None = None  # a tokenizer folder; None: the upstream's /tokenize counts tokens
    upstream_max_in_flight: int = Field(default=256, ge=1)  # per replica
    upstream_health_interval: float = Field(default=5.0, gt=0)
    upstream_connect_timeout: float = Field(default=3.0, gt=0)
    dtype: Literal["auto", "float32", "bfloat16", "float16", "int8"] = "auto"

    api_key_header: str = Field(default="X-API-Key", min_length=1, pattern=r"^[A-Za-z0-9-]+$")
    api_keys: list[ApiKeyConfig] = Field(default_factory=list)
    api_keys_file: Path | None = None

    max_queue: int = Field(default=64, ge=1)
    max_batch_size: int = Field(default=64, ge=1, le=256)
    # OpenMP threads of a CPU worker; 0: the CPUs this process may use (affinity mask, cgroup CPU quota).
    torch_threads: int = Field(default=0, ge=0, le=1024)
    # Re-measure decode steps with one thread fewer or more and keep the faster (a shared or throttled CPU).
    tune_threads: bool = True
    prefix_cache_tokens: int = Field(default=2048, ge=0)
    batch_join_wait: float = Field(default=0.1, ge=0, le=10)
    max_input_tokens: int = Field(default=4096, ge=1)
    max_new_tokens: int = Field(default=512, ge=1)
    request_timeout: float = Field(default=120.0, gt=0)

    redis_url: str | None = Field(default=None, pattern=r"^rediss?://")
    chroma_url: str | None = Field(default=None, pattern=r"^https?://")
    session_ttl: float = Field(default=7 * 24 * 3600.0, gt=0)
    max_upload_mb: float = Field(default=20.0, gt=0)
    # Each upload is parsed in a child process bounded by these (documents/sandbox.py).
    parse_timeout: float = Field(default=8.0, gt=0)
    parse_memory_mb: int = Field(default=256, ge=32)
    # Retrieval-augmented answers (documents/grounding.py): RAG_TOP_K chunks are retrieved (hybrid: BM25 and
    # dense, fused by rank); a chunk is kept as a source when its best sentence's support (half its cosine to
    # the question, half the idf-weighted share of the question's terms it holds) reaches RAG_MIN_SCORE; at
    # most RAG_MAX_SOURCES are kept. RAG_UNGROUNDED: what a whole (not streamed) answer that does not draw on
    # its sources becomes: `refuse` says the documents do not say, `flag` keeps it; both report grounded: false.
    # Uploads of at least this size are stored in the background (202, then GET /documents/{id} for progress).
    ingest_background_mb: float = Field(default=1.0, ge=0)
    rag_top_k: int = Field(default=6, ge=1, le=20)
    rag_min_score: float = Field(default=0.3, ge=-1.0, le=1.0)
    rag_max_sources: int = Field(default=3, ge=1, le=20)
    rag_ungrounded: Literal["refuse", "flag"] = "refuse"
    # How the sources and the question are laid out (documents/grounding.py; measured in bench/RESULTS.md):
    # `text` (the evidence sentences as one text, the best last, then the instruction and the question),
    # `text-question-first`, `answer` (numbered sources, the question, then the instruction), `answer-or-refuse`
    # (also asks to say when the sources do not answer: the 135M model then refused most answerable questions).
    rag_prompt: Literal["answer", "answer-or-refuse", "text", "text-question-first"] = "text"
    summary_max_tokens: int = Field(default=96, ge=16)
    response_cache_mb: float = Field(default=0.0, ge=0.0)
    maintenance_interval: float = Field(default=300.0, gt=0)
    drain_timeout: float = Field(default=30.0, ge=0)

    # Observability.
    prometheus_enabled: bool = True
    metrics_path: str = Field(default="/prometheus", pattern=r"^/[A-Za-z0-9/_-]*$")
    log_format: Literal["text", "json"] = "text"
    memory_warning: float = Field(default=0.85, gt=0, le=1)
    memory_critical: float = Field(default=0.95, gt=0, le=1)
    memory_check_interval: float = Field(default=15.0, gt=0)

    # Security.
    jwt_secret: SecretStr | None = None
    jwt_private_key_file: Path | None = None
    jwt_public_key_file: Path | None = None
    jwt_ttl: int = Field(default=900, ge=1)
    rate_limit: str = "60/minute"
    rate_limit_generation: str = "30/minute"
    tokens_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_day: int | None = Field(default=None, ge=1)
    max_body_kb: int = Field(default=1024, ge=1)
    cors_origins: list[str] = Field(default_factory=list)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError("must be 'auto', 'cpu', 'cuda' or 'cuda:N'")

    @field_validator("rate_limit", "rate_limit_generation")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        return check_rate_limit(value)

    @field_validator("upstream_url")
    @classmethod
    def _upstream_urls(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        for url in value.split(","):
            if not url.strip().startswith(("http://", "https://")):
                raise ValueError(f"{url.strip()!r} is not an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _upstream_backend(self) -> Settings:
        if self.backend == "openai" and self.upstream_url is None:
            raise ValueError("BACKEND=openai needs UPSTREAM_URL (the upstream's /v1 base URLs, comma-separated)")
        return self

    @property
    def upstream_urls(self) -> list[str]:
        return [url.strip().rstrip("/") for url in (self.upstream_url or "").split(",") if url.strip()]

    @model_validator(mode="after")
    def _memory_thresholds(self) -> Settings:
        if self.memory_warning >= self.memory_critical:
            raise ValueError("MEMORY_WARNING must be below MEMORY_CRITICAL")
        return self

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @property
    def registry_path(self) -> Path:
        return self.model_registry or self.data_dir / "models.yaml"

    @property
    def max_upload_bytes(self) -> int:
        """The upload cap in bytes (MAX_UPLOAD_MB): the one number every upload check uses."""
        return int(self.max_upload_mb * 1024 * 1024)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[Any, ...]:
        sources: list[Any] = [init_settings, env_settings, dotenv_settings]
        config_file = os.environ.get("CONFIG_FILE")
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)


class SettingsError(Exception):
    """Configuration that cannot start the service; the message names the offending variable."""


def load_settings(**overrides: Any) -> Settings:
    """Build Settings, turning pydantic's report into one readable message per bad variable."""
    config_file = os.environ.get("CONFIG_FILE")
    if config_file:
        _check_config_file(Path(config_file))
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None
    except PydanticSettingsError as exc:
        # pydantic-settings reports an undecodable complex value (API_KEYS that is not JSON) by field name.
        field = re.search(r'field "(\w+)"', str(exc))
        variable = field.group(1).upper() if field else "settings"
        raise SettingsError(f"{variable}: not valid JSON") from None
    return settings


def _check_config_file(path: Path) -> None:
    if not path.is_file():
        raise SettingsError(f"CONFIG_FILE: {path} does not exist")
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"CONFIG_FILE: {path} is not readable YAML ({type(exc).__name__})") from None
    if content is not None and not isinstance(content, dict):
        raise SettingsError(f"CONFIG_FILE: {path} must hold a mapping of setting names to values")


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        if not loc:  # a check across settings names its variables in the message
            lines.append(err["msg"].removeprefix("Value error, "))
            continue
        where = "".join(f"[{p}]" for p in loc[1:])
        lines.append(f"{loc[0].upper()}{where}: {err['msg']}")
    return "invalid settings: " + "; ".join(lines)
