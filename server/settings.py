"""routegate's settings: environment variables prefixed ``ROUTEGATE_`` over an optional YAML file.

Nested settings use ``__`` (``ROUTEGATE_STRONG__BASE_URL``). The YAML file is named by
``routegate serve --config FILE``, which passes it on as ``ROUTEGATE_CONFIG`` so that every
worker process reads the same settings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

ENV_PREFIX = "ROUTEGATE_"
CONFIG_ENV = "ROUTEGATE_CONFIG"
OPENAI_BASE_URL = "https://api.openai.com/v1"


class UpstreamSettings(BaseModel):
    """One OpenAI-compatible upstream (the strong or the weak tier)."""

    model_config = {"extra": "forbid"}

    base_url: str = OPENAI_BASE_URL
    api_key: SecretStr | None = None
    model: str
    input_price: float = Field(0.0, ge=0, description="USD per 1M prompt tokens")
    output_price: float = Field(0.0, ge=0, description="USD per 1M completion tokens")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("model")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value


TIER_DEFAULTS: dict[str, dict[str, object]] = {
    "strong": {"model": "gpt-4o", "input_price": 2.5, "output_price": 10.0},
    "weak": {"model": "gpt-4o-mini", "input_price": 0.15, "output_price": 0.6},
}


def _default_strong() -> UpstreamSettings:
    return UpstreamSettings(**TIER_DEFAULTS["strong"])


def _default_weak() -> UpstreamSettings:
    return UpstreamSettings(**TIER_DEFAULTS["weak"])


class Settings(BaseSettings):
    """Everything routegate can be told; see the README's settings table for each default."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, description="uvicorn worker processes")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    strong: UpstreamSettings = Field(default_factory=_default_strong)
    weak: UpstreamSettings = Field(default_factory=_default_weak)

    router: str = "mf"
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    aliases: dict[str, str] = Field(default_factory=dict, description="model name -> routed model string")
    router_strong_model: str = Field("gpt-4-1106-preview", description="strong model's name in the router's training data")
    router_weak_model: str = Field(
        "mistralai/Mixtral-8x7B-Instruct-v0.1", description="weak model's name in the router's training data"
    )
    checkpoint_dir: Path | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    route_on: Literal["last_user", "conversation", "sticky"] = "last_user"
    conversation_turns: int = Field(4, ge=1)
    max_router_chars: int = Field(4000, ge=1, description="characters of routed text given to the router")
    sticky_max_conversations: int = Field(100_000, ge=1, description="conversations remembered as strong (route_on=sticky)")
    sticky_ttl_seconds: float = Field(3600.0, gt=0, description="a sticky conversation is forgotten after this idle time")

    target_share: float = Field(0.3, ge=0.0, le=1.0, description="target share listed in /v1/models (router-<r>-30%)")
    target_window: int = Field(500, ge=10, description="recent scores a target route's threshold is the quantile of")
    target_feedback_horizon: int = Field(100, ge=1, description="decisions the realised-share feedback remembers")
    daily_budget_usd: float | None = Field(None, gt=0, description="strong-tier USD per UTC day; tightens target routes")

    redis_url: SecretStr | None = Field(None, description="redis://[:password@]host:port/db shared by replicas; unset = in-process state")
    redis_prefix: str = Field("routegate:", min_length=1, description="namespace of every key routegate writes to Redis")
    redis_timeout_ms: float = Field(250.0, gt=0, description="longest wait for one Redis operation (connect included)")
    redis_retry_seconds: float = Field(1.0, gt=0, description="after a Redis failure, in-process state decides this long")
    redis_max_connections: int = Field(32, ge=1, description="Redis connections per process")
    shared_score_cache: bool = Field(False, description="share router scores through Redis too (needs redis_url)")

    allow_overrides: bool = Field(False, description="honour x-routegate-force-tier / -force-threshold headers")
    override_keys: list[SecretStr] = Field(default_factory=list, description="client keys allowed to override; empty = any")

    api_keys: list[SecretStr] = Field(default_factory=list)

    connect_timeout: float = Field(5.0, gt=0)
    read_timeout: float = Field(120.0, gt=0)
    total_timeout: float = Field(300.0, gt=0, description="deadline for all tries of one request, seconds")
    retries: int = Field(2, ge=0, le=10)
    retry_backoff: float = Field(0.25, ge=0, description="first retry delay in seconds, doubled each try")
    fallback: bool = True
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_header_bytes: int = Field(64 * 1024, ge=1024, description="request line and headers; more get 431")
    body_timeout: float = Field(60.0, gt=0, description="seconds a client may take to send its request body (408)")
    max_response_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="largest non-streamed upstream answer")
    max_concurrent_requests: int = Field(512, ge=1, description="upstream requests handled at once")
    max_queued_requests: int = Field(1024, ge=0, description="requests waiting for a slot; more are refused with 429")
    queue_timeout: float = Field(5.0, ge=0, description="seconds a request may wait for a slot before a 429")
    shutdown_grace_seconds: float = Field(30.0, ge=0, description="time in-flight requests get to finish on SIGTERM")
    max_connections: int = Field(512, ge=1, description="pooled HTTP connections per upstream")
    max_keepalive_connections: int = Field(128, ge=0, description="idle connections kept (httpx transport)")
    upstream_transport: Literal["aiohttp", "httpx"] = Field(
        "aiohttp", description="connection pool under the httpx client: aiohttp's (faster) or httpcore's"
    )

    score_batch_size: int = Field(32, ge=1, description="most prompts scored in one router call")
    score_batch_wait_ms: float = Field(
        0.0, ge=0, description="longest wait to fill a scoring batch; 0 = score what has queued up at once"
    )
    score_threads: int = Field(
        0, ge=0, description="router batches scored at once, each on its own thread; 0 = one per core on the CPU, one on a GPU"
    )
    torch_threads: int = Field(
        0,
        ge=0,
        description="torch threads per scoring thread on the CPU (numpy's BLAS always gets one); 0 = the cores less one for the event loop, shared out among the scoring threads, at least one each",
    )
    score_cache_size: int = Field(4096, ge=0, description="LRU entries of scores; 0 turns the cache off")

    @model_validator(mode="before")
    @classmethod
    def _tier_defaults(cls, data: object) -> object:
        """A tier given in part (say only ``ROUTEGATE_STRONG__BASE_URL``) keeps the defaults of the rest."""
        if isinstance(data, dict):
            for tier, defaults in TIER_DEFAULTS.items():
                if isinstance(data.get(tier), dict):
                    data = {**data, tier: {**defaults, **data[tier]}}
        return data

    @model_validator(mode="after")
    def _openai_key_from_env(self) -> Settings:
        """Upstreams on the OpenAI API with no key of their own take ``OPENAI_API_KEY``."""
        openai_key = os.environ.get("OPENAI_API_KEY")
        for upstream in (self.strong, self.weak):
            if upstream.api_key is None and openai_key and upstream.base_url == OPENAI_BASE_URL:
                upstream.api_key = SecretStr(openai_key)
        return self

    @field_validator("aliases")
    @classmethod
    def _alias_targets(cls, value: dict[str, str]) -> dict[str, str]:
        for name, target in value.items():
            if not name or not target:
                raise ValueError("alias names and targets must not be empty")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_ENV)
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)


class SettingsError(Exception):
    """Settings that cannot be used; the message names each offending setting."""


def _env_name(location: tuple[str | int, ...]) -> str:
    return ENV_PREFIX + "__".join(str(part).upper() for part in location)


def load_settings(config_file: str | Path | None = None, **overrides: object) -> Settings:
    """Read settings from the environment and ``config_file`` (YAML); raise SettingsError when invalid."""
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise SettingsError(f"config file not found: {path}")
        os.environ[CONFIG_ENV] = str(path.resolve())
    try:
        return Settings(**overrides)
    except ValidationError as error:
        lines = [
            f"{_env_name(issue['loc'])}: {issue['msg']}" if issue["loc"] else issue["msg"]
            for issue in error.errors(include_url=False, include_input=False)
        ]
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None
