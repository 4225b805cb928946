"""routegate's settings: environment variables prefixed ``ROUTEGATE_`` over an optional YAML file.

Nested settings use ``__`` (``ROUTEGATE_STRONG__BASE_URL``). The YAML file is named by
``routegate serve --config FILE``, which passes it on as ``ROUTEGATE_CONFIG`` so that every
worker process reads the same settings.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import SplitResult, unquote, urlsplit

import pydantic_settings
import yaml
from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource
from redis.connection import parse_url

from server.model_list import check_models, check_name

ENV_PREFIX = "ROUTEGATE_"
CONFIG_ENV = "ROUTEGATE_CONFIG"
OPENAI_BASE_URL = "https://api.openai.com/v1"
#: a routed model string, ``router-<router>-<threshold or percent%>`` (server.model_names reads it)
ROUTER_MODEL = re.compile(r"^router-(?P<router>[A-Za-z0-9_]+)-(?P<threshold>[^-]+)\Z")


PLACEHOLDER = "replace-me"  # the example Secret's values (deploy/kubernetes/secret.yaml) all hold it


def not_placeholder(value: list[SecretStr] | SecretStr | None) -> list[SecretStr] | SecretStr | None:
    """``value``, unless a secret in it is still one of the example Secret's placeholders."""
    secrets = value if isinstance(value, list) else [value] if value is not None else []
    if any(PLACEHOLDER in secret.get_secret_value() for secret in secrets):
        raise ValueError(f"still holds the example Secret's '{PLACEHOLDER}-...' placeholder: put your own value in the Secret")
    return value


def api_root(value: str) -> str:
    """An upstream's ``http(s)://`` API root without a trailing slash. Credentials in it are
    refused (a URL is logged and shown where a key is not), and so is a query or fragment, which
    the paths routegate appends would end up inside."""
    if not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    parts = urlsplit(value)
    if "@" in parts.netloc:
        raise ValueError("must not hold credentials (user:password@): put the key in api_key")
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        raise ValueError("must not hold a query (?...) or fragment (#...): routegate appends /chat/completions to it")
    return value.rstrip("/")


class UpstreamSettings(BaseModel):
    """One OpenAI-compatible upstream (the strong or the weak tier)."""

    model_config = {"extra": "forbid", "allow_inf_nan": False}

    base_url: str = Field(
        OPENAI_BASE_URL, description="the upstream's OpenAI-compatible API root (a key goes in `api_key`, not in the URL)"
    )
    api_key: SecretStr | None = Field(None, description="the upstream's key; unset on the OpenAI API: `$OPENAI_API_KEY`")
    model: str = Field(description="model name sent upstream")
    input_price: float = Field(0.0, ge=0, description="USD per 1M prompt tokens")
    output_price: float = Field(0.0, ge=0, description="USD per 1M completion tokens")

    _real_key = field_validator("api_key")(not_placeholder)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return api_root(value)

    @field_validator("model")
    @classmethod
    def _sendable_model_name(cls, value: str) -> str:
        """A model name that can be sent as it is (it is also the ``x-routegate-model`` header)."""
        if not value.strip():
            raise ValueError("must not be empty")
        if value != value.strip() or not value.isascii() or not value.isprintable():
            raise ValueError("must be printable ASCII without spaces around it, as an upstream's model names are")
        return value


class ModelEntry(UpstreamSettings):
    """One upstream of ``ROUTEGATE_MODELS`` (routing among several models; see server/model_list.py)."""

    name: str = Field(description="the upstream's name in headers, metrics and requests")
    # required here: an entry priced 0 by omission would order the ladder and escape the budget
    input_price: float = Field(ge=0, description="USD per 1M prompt tokens")
    output_price: float = Field(ge=0, description="USD per 1M completion tokens")
    router_model: str | None = Field(None, description="its name in the router's data; unset: matched from `model`")
    most_capable: bool = Field(
        False, description="route against this model as the most capable (at most one entry); none set: the dearest"
    )

    @field_validator("name")
    @classmethod
    def _usable_name(cls, value: str) -> str:
        return check_name(value)

    @field_validator("router_model")
    @classmethod
    def _non_empty_router_model(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty (leave it unset to match the model name)")
        return value


TIER_DEFAULTS: dict[str, dict[str, Any]] = {
    "strong": {"model": "gpt-4o", "input_price": 2.5, "output_price": 10.0},
    "weak": {"model": "gpt-4o-mini", "input_price": 0.15, "output_price": 0.6},
}


class JudgeSettings(BaseModel):
    """The LLM that judges shadowed answers; unset fields are the strong upstream's (its key only for the
    strong upstream's own base URL; on another URL, the OpenAI API's, ``OPENAI_API_KEY``)."""

    model_config = {"extra": "forbid", "allow_inf_nan": False}

    base_url: str | None = Field(None, description="judge's OpenAI-compatible API (unset: the strong upstream's)")
    api_key: SecretStr | None = Field(
        None,
        description="judge's key (unset: the strong upstream's if the judge uses the strong base URL, OPENAI_API_KEY "
        "on the OpenAI API, else none)",
    )
    model: str | None = Field(None, description="judge model (unset: the strong upstream's)")
    input_price: float | None = Field(None, ge=0, description="USD per 1M prompt tokens")
    output_price: float | None = Field(None, ge=0, description="USD per 1M completion tokens")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return None if value is None else api_root(value)


def _default_strong() -> UpstreamSettings:
    return UpstreamSettings(**TIER_DEFAULTS["strong"])


def _default_weak() -> UpstreamSettings:
    return UpstreamSettings(**TIER_DEFAULTS["weak"])


class Settings(BaseSettings):
    """Everything routegate can be told; docs/configuration.md lists each setting (``python -m server.settings_doc``)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
        env_ignore_empty=True,  # an empty variable (compose's ${X:-}) means "not set"
        allow_inf_nan=False,  # an infinite timeout or price is a typo; nothing here means "forever"
    )

    host: str = Field("127.0.0.1", description="listen address")
    port: int = Field(8000, ge=0, le=65535, description="listen port")
    workers: int = Field(1, ge=1, description="uvicorn worker processes")
    worker_ready_timeout: float = Field(
        120.0,
        gt=0,
        description="on SIGHUP each worker is replaced once its replacement can score (its routers loaded); "
        "a replacement not ready this many seconds after it started ends the restart, the old workers serving on",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("info", description="log level")

    strong: UpstreamSettings = Field(default_factory=_default_strong, description="strong (expensive) upstream")
    weak: UpstreamSettings = Field(default_factory=_default_weak, description="weak (cheap) upstream")
    models: list[ModelEntry] = Field(
        default_factory=list,
        description="JSON list of 2-16 upstreams to route among, each {name, base_url, api_key, model, input_price, "
        "output_price, router_model, most_capable}; empty: the strong/weak pair above (docs/serving-many-models.md)",
    )

    router: str = Field("mf", description="default router (model `auto`)")
    routers: list[str] = Field(
        default_factory=list, description="routers clients may name, loaded at start; empty = the default router and random"
    )
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="default threshold (model `auto`)")
    aliases: dict[str, str] = Field(
        default_factory=dict,
        description="model name -> routed model string (not named like a route, router-<router>-<threshold>)",
    )
    router_strong_model: str | None = Field(
        None,
        description="model the router scores as strong (default: the strong upstream's model when the router knows it); "
        "with `ROUTEGATE_MODELS`: each entry's `router_model`",
    )
    router_weak_model: str | None = Field(
        None,
        description="model the router scores as weak (default: the weak upstream's model when the router knows it); "
        "with `ROUTEGATE_MODELS`: each entry's `router_model`",
    )
    checkpoint_dir: Path | None = Field(None, description="where routers load their checkpoints; unset: the shipped ones")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="router device; `auto`: cuda when present")
    route_on: Literal["last_user", "conversation", "sticky"] = Field("last_user", description="what of a conversation is routed")
    conversation_turns: int = Field(4, ge=1, description="messages scored with route_on=conversation")
    max_router_chars: int = Field(4000, ge=1, description="characters of routed text given to the router")
    sticky_max_conversations: int = Field(100_000, ge=1, description="conversations remembered as strong (route_on=sticky)")
    sticky_ttl_seconds: float = Field(
        3600.0,
        gt=0,
        le=86400,
        description="a sticky conversation is forgotten after this idle time (at most a day: in Redis, "
        "conversations must expire before the target windows and the day's budget, which an eviction takes last)",
    )

    target_share: float = Field(0.3, ge=0.0, le=1.0, description="target share listed in /v1/models (router-<r>-30%)")
    target_window: int = Field(500, ge=10, le=100_000, description="recent scores a target route's threshold is the quantile of")
    target_feedback_horizon: int = Field(
        100, ge=10, description="decisions the realised-share feedback remembers (under 10 it overshoots)"
    )
    max_target_routes: int = Field(
        32,
        ge=1,
        description="target routes (router and whole percent) clients may open besides the listed ones, each client "
        "key a quarter of them (at least one); a new one takes the place of one idle for 10 minutes, else gets 400",
    )
    daily_budget_usd: float | None = Field(None, gt=0, description="strong-tier USD per UTC day; tightens target routes")
    budget_exhausted: Literal["weak", "reject"] = Field(
        "weak", description="strong-tier requests once the daily budget is spent: sent weak, or refused with 429"
    )

    redis_url: SecretStr | None = Field(
        None, description="redis://[:password@]host:port/db that replicas share state through; unset = in-process state"
    )
    redis_prefix: str = Field("routegate:", min_length=1, description="namespace of every key routegate writes to Redis")
    redis_timeout_ms: float = Field(250.0, gt=0, description="longest wait for one Redis operation (connect included)")
    redis_retry_seconds: float = Field(
        1.0,
        ge=0.1,
        description="after a Redis failure, in-process state decides this long; also how often Redis is pinged",
    )
    redis_max_connections: int = Field(
        32, ge=1, description="Redis connections per process; an operation that finds all busy waits for one within its timeout"
    )
    shared_score_cache: bool = Field(False, description="share router scores through Redis too (needs redis_url)")

    fixed_routes: bool = Field(
        False,
        description="clients may name only auto and ROUTEGATE_ALIASES (403 for a threshold, share or upstream model of "
        "their own choosing); clients allowed to override (ROUTEGATE_ALLOW_OVERRIDES) may name any",
    )
    allow_overrides: bool = Field(False, description="honour x-routegate-force-tier / -force-threshold headers")
    override_keys: list[SecretStr] = Field(default_factory=list, description="client keys allowed to override; empty = any")

    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description="accepted client keys (Bearer); empty = no auth; a blank key, or one with a character that is not "
        "printable ASCII, is refused",
    )
    allow_unauthenticated: bool = Field(
        False,
        description="serve a non-loopback host without ROUTEGATE_API_KEYS; also lets any browser origin call a "
        "loopback gateway without keys (an authenticating proxy in front of it)",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="browser origins (https://chat.example.com) whose pages may call routegate (CORS), each "
        "http(s)://host[:port] (no wildcard, path, query or user); a loopback gateway without client keys serves "
        "these beside this machine's own",
    )
    metrics_key: SecretStr | None = Field(
        None,
        description="Bearer key /metrics requires; unset: on the API port, a client key where ROUTEGATE_HOST is not "
        "loopback (none with ROUTEGATE_ALLOW_UNAUTHENTICATED), none on loopback or ROUTEGATE_METRICS_PORT",
    )
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="serve /metrics on this port instead of the API port (another than ROUTEGATE_PORT)"
    )

    connect_timeout: float = Field(5.0, gt=0, description="seconds to connect upstream")
    read_timeout: float = Field(120.0, gt=0, description="seconds between bytes from upstream")
    total_timeout: float = Field(300.0, gt=0, description="deadline for all tries of one request, seconds")
    client_send_timeout: float = Field(
        60.0,
        ge=0.1,
        description="seconds a client may take to accept the next chunk of a stream (slower is treated as gone, 499) "
        "or 64 KiB piece of a plain answer (slower has its connection dropped)",
    )
    retries: int = Field(2, ge=0, le=10, description="retries per tier on connect errors, timeouts, 429 and 5xx")
    retry_backoff: float = Field(0.25, ge=0, description="first retry delay in seconds, doubled each try")
    fallback: bool = Field(True, description="after the retries, try the other tier (never once a stream started)")
    stream_hold_seconds: float = Field(
        10.0,
        ge=0,
        description="how long a stream's comments before its first event (keep-alives) are held, from the first of "
        "them, so that a failure after them, or an error as that event, is still retried and falls back; then they are "
        "relayed and the stream has started (a proxy in front hears nothing until the upstream's first byte and this "
        "hold: keep both under its idle timeout)",
    )
    stream_usage: bool = Field(
        True,
        description="ask upstreams for usage on every stream (stream_options.include_usage) so streams are metered "
        "and charged by the tokens they report; the usage chunk reaches only clients that asked for it, and an upstream "
        "that refuses the field (a 400 naming it, or a 422 whose validation error names it) when the client sent none is "
        "asked without it from then on (a client's own field's refusal is relayed); a stream without usage is charged an "
        "estimate",
    )
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="larger request bodies get 413")
    max_pending_body_bytes: int | None = Field(
        None,
        ge=1024,
        description="request body bytes a process holds at once (a body parses to several times its size, and its request "
        "keeps it while it waits for a slot and is answered), counted as they arrive and given back when the request "
        "ends; a request whose body does not fit gets 429; the default holds 512 requests of 128 KiB (32k-token "
        "prompts): raise it, with memory to match, for more long-context requests at once; at least "
        "ROUTEGATE_MAX_BODY_BYTES (default: 64 MiB, or ROUTEGATE_MAX_BODY_BYTES when that is larger); with two or "
        "more ROUTEGATE_API_KEYS one key's bodies may hold at most half of it (or one largest body)",
    )
    max_header_bytes: int = Field(64 * 1024, ge=1024, description="request line and headers; more get 431")
    body_timeout: float = Field(60.0, gt=0, description="seconds a client may take to send its request body (408)")
    head_timeout: float = Field(
        20.0,
        gt=0,
        description="seconds a client may take to send a request's line and headers, from connecting or its first byte "
        "(408); also how long a connection may trickle bytes outside a request",
    )
    keep_alive_seconds: int = Field(
        5,
        ge=1,
        description="seconds an idle client connection is kept open between requests; behind a load balancer that "
        "reuses connections, keep it above the balancer's idle timeout (ingress-nginx and AWS ALB: 60 s), or a request "
        "sent as routegate closes the connection fails with a 502 there",
    )
    max_response_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="largest non-streamed upstream answer")
    max_concurrent_requests: int = Field(
        512, ge=1, description="upstream requests handled at once (with two or more client keys, half of them per key)"
    )
    max_queued_requests: int = Field(1024, ge=0, description="requests waiting for a slot; more are refused with 429")
    queue_timeout: float = Field(5.0, ge=0, description="seconds a request may wait for a slot before a 429")
    shutdown_grace_seconds: float = Field(30.0, ge=0, description="time in-flight requests get to finish on SIGTERM")
    max_connections: int = Field(
        512,
        ge=1,
        description="pooled HTTP connections per upstream; keep it at least MAX_CONCURRENT_REQUESTS: "
        "a request waiting for a free connection spends its connect timeout there",
    )

    score_batch_size: int = Field(32, ge=1, description="most prompts scored in one router call")
    score_batch_wait_ms: float = Field(
        0.0, ge=0, description="longest wait to fill a scoring batch; 0 = score what has queued up at once"
    )
    score_threads: int = Field(
        0,
        ge=0,
        description="router batches scored at once, each on its own thread; 0 = one per core on the CPU (the cores "
        "this process may use: its CPU affinity, capped by a cgroup v2 CPU limit, as a container's), one on a GPU",
    )
    torch_threads: int = Field(
        0,
        ge=0,
        description=(
            "torch threads per scoring thread on the CPU (numpy's BLAS always gets one); 0 = the cores less one "
            "for the event loop, shared out among the scoring threads, at least one each"
        ),
    )
    score_cache_size: int = Field(4096, ge=0, description="LRU entries of scores; 0 turns the cache off")
    score_queue_size: int = Field(512, ge=1, description="prompts waiting for a router batch; more are scoring overload")
    score_timeout: float = Field(5.0, gt=0, description="seconds a request may wait for its score before scoring overload")
    scoring_overload: Literal["shed", "weak", "strong"] = Field(
        "shed", description="a request not scored in time: 429 (shed), or routed unscored to the weak or strong tier"
    )
    router_retry_seconds: float = Field(
        30.0,
        gt=0,
        description="after a router failed to load, its requests get 503 this long; then it is loaded again "
        "(the default router by itself, until it loads)",
    )

    # Learning from traffic (docs/feedback.md): the store, shadow judging and the judge.
    feedback_db: SecretStr = Field(  # secret: a postgresql:// URL may hold a password
        SecretStr(""),
        description="sqlite file path, sqlite:///absolute/path, postgresql://... or off; "
        "empty: `~/.local/state/routegate/feedback.sqlite3`",
    )
    feedback_store_text: bool = Field(False, description="store prompt text (else only its sha1)")
    feedback_retention_days: float = Field(30.0, gt=0, description="rows older than this are deleted")
    feedback_queue_size: int = Field(10_000, ge=1, description="store writes waiting; more are dropped and counted")
    feedback_max_rows: int = Field(
        5_000_000,
        ge=1,
        le=10**12,  # a database's 64-bit OFFSET holds it
        description="rows kept per table; the oldest beyond are deleted hourly (a judged or rated request's decision "
        "stays while its labels do)",
    )
    shadow_rate: float = Field(0.0, ge=0.0, le=1.0, description="share of routed answers also sent to the other tier and judged")
    shadow_max_concurrent: int = Field(4, ge=1, description="shadow jobs (shadow call + two judge calls) at once")
    shadow_queue_size: int = Field(100, ge=1, description="shadow jobs waiting; more are dropped and counted")
    shadow_daily_budget_usd: float | None = Field(
        None,
        gt=0,
        description="USD per UTC day for shadow and judge calls: shared by the replicas through ROUTEGATE_REDIS_URL when "
        "set, else per replica (split over its workers)",
    )
    shadow_tools: bool = Field(False, description="also shadow requests carrying tools or tool results")
    shadow_max_job_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="larger shadow jobs (the request body as JSON plus the chosen answer) are skipped and counted, so "
        "that the shadow queue holds at most about this times ROUTEGATE_SHADOW_QUEUE_SIZE",
    )
    judge: JudgeSettings = Field(default_factory=JudgeSettings, description="the LLM that judges shadowed answers")

    _real_secrets = field_validator("api_keys", "override_keys", "metrics_key", "redis_url", "feedback_db")(not_placeholder)

    @field_validator("feedback_db", mode="before")
    @classmethod
    def _feedback_db_off_in_yaml(cls, value: object) -> object:
        """YAML reads an unquoted ``off`` as false."""
        return "off" if value is False else value

    @field_validator("feedback_db")
    @classmethod
    def _feedback_db_known(cls, url: SecretStr) -> SecretStr:
        """An SQLite path or a PostgreSQL URL (or ``off``), found wrong at start-up rather than
        when the first answer is stored."""
        value = url.get_secret_value().strip()
        if value.lower() != "off":
            store_kind(value)
        return url

    @field_validator("redis_url")
    @classmethod
    def _redis_url_parses(cls, url: SecretStr | None) -> SecretStr | None:
        """A URL redis-py can read; its own error would quote part of the password."""
        if url is not None:
            value = url.get_secret_value()
            try:
                options = parse_url(value)
                parts = urlsplit(value)
                if parts.scheme != "unix" and not _host_part_whole(parts):
                    raise ValueError
            except ValueError:
                raise ValueError(
                    "is not a redis://, rediss:// or unix:// URL that can be read; "
                    "percent-encode any '/', '#', '?' or '@' in its password"
                ) from None
            path = unquote(parts.path).replace("/", "")
            if parts.scheme != "unix" and path and "db" not in options:  # redis-py would use database 0
                raise ValueError("has a path that is not a database number: give one, as in redis://redis:6379/0, or none")
        return url

    @model_validator(mode="before")
    @classmethod
    def _tier_defaults(cls, data: object) -> object:
        """A tier given in part (say only ``ROUTEGATE_STRONG__BASE_URL``) keeps the defaults of the rest."""
        if isinstance(data, dict):
            for tier, defaults in TIER_DEFAULTS.items():
                if isinstance(data.get(tier), dict):
                    data = {**data, tier: {**defaults, **data[tier]}}
        return data

    @model_validator(mode="before")
    @classmethod
    def _models_or_tiers(cls, data: object) -> object:
        """``ROUTEGATE_MODELS`` replaces the strong/weak pair; setting both is a mistake."""
        if isinstance(data, dict) and data.get("models") and {"strong", "weak"} & data.keys():
            raise ValueError("set either ROUTEGATE_MODELS or ROUTEGATE_STRONG__* / ROUTEGATE_WEAK__*, not both")
        if isinstance(data, dict) and data.get("models") and {"router_strong_model", "router_weak_model"} & data.keys():
            raise ValueError(
                "ROUTEGATE_ROUTER_STRONG_MODEL / ROUTEGATE_ROUTER_WEAK_MODEL name the two tiers' models: "
                "with ROUTEGATE_MODELS give an entry's router_model instead"
            )
        return data

    @model_validator(mode="after")
    def _aliases_take_no_route(self) -> Settings:
        """An alias is looked up first: named like a route (``router-mf-0.5``), it would send that
        route's requests elsewhere. (An alias named like an upstream model is allowed: it routes an
        app that asks for that model by name.)"""
        for alias in self.aliases:
            if ROUTER_MODEL.match(alias):
                raise ValueError(f"ROUTEGATE_ALIASES: alias '{alias}' is a router route's name, which it would take over")
        return self

    @model_validator(mode="after")
    def _shared_cache_needs_redis(self) -> Settings:
        """Sharing scores is done through Redis: asked for without it, it would silently do nothing."""
        if self.shared_score_cache and self.redis_url is None:
            raise ValueError("ROUTEGATE_SHARED_SCORE_CACHE shares scores through Redis: set ROUTEGATE_REDIS_URL too")
        return self

    @model_validator(mode="after")
    def _shadow_judges_two_tiers(self) -> Settings:
        """Shadow judging compares the strong and the weak tier's answers: with several models it would do nothing."""
        if self.models and self.shadow_rate > 0:
            raise ValueError(
                "ROUTEGATE_SHADOW_RATE judges each answer against the other of two tiers: with ROUTEGATE_MODELS "
                "there are none, so leave it 0"
            )
        return self

    @model_validator(mode="after")
    def _openai_key_from_env(self) -> Settings:
        """Upstreams (and a judge) on the OpenAI API with no key of their own take ``OPENAI_API_KEY``."""
        openai_key = os.environ.get("OPENAI_API_KEY")
        for upstream in (self.strong, self.weak, *self.models):
            if upstream.api_key is None and openai_key and upstream.base_url == OPENAI_BASE_URL:
                upstream.api_key = SecretStr(openai_key)
        judge = self.judge  # on the strong upstream's URL it takes the strong key, which may be another account's
        if judge.api_key is None and openai_key and judge.base_url == OPENAI_BASE_URL != self.strong.base_url:
            judge.api_key = SecretStr(openai_key)
        return self

    @property
    def judge_base_url(self) -> str:
        """The judge's API root: its own, or the strong upstream's."""
        return self.judge.base_url or self.strong.base_url

    @property
    def judge_api_key(self) -> SecretStr | None:
        """The judge's key: its own, or the strong upstream's when the judge uses the strong base URL."""
        if self.judge.api_key is not None:
            return self.judge.api_key
        return self.strong.api_key if self.judge_base_url == self.strong.base_url else None

    @property
    def pending_body_limit(self) -> int:
        """ROUTEGATE_MAX_PENDING_BODY_BYTES, or its default: 64 MiB, or the largest body when that is larger."""
        if self.max_pending_body_bytes is not None:
            return self.max_pending_body_bytes
        return max(64 * 1024 * 1024, self.max_body_bytes)

    @property
    def client_key_count(self) -> int:
        """How many distinct client keys ROUTEGATE_API_KEYS holds: with two or more, each key gets a share
        of the request bodies and of the upstream slots (one client is every client)."""
        return len({key.get_secret_value() for key in self.api_keys})

    @property
    def client_body_share(self) -> int:
        """What of ``pending_body_limit`` one client key's bodies may hold: half of it, or the largest
        body when that is more; all of it with fewer than two client keys (one client is every client)."""
        if self.client_key_count < 2:
            return self.pending_body_limit
        return max(self.pending_body_limit // 2, self.max_body_bytes)

    @model_validator(mode="after")
    def _largest_body_fits_the_budget(self) -> Settings:
        """A body of ROUTEGATE_MAX_BODY_BYTES must fit ROUTEGATE_MAX_PENDING_BODY_BYTES, or it could never be read."""
        if self.max_pending_body_bytes is not None and self.max_pending_body_bytes < self.max_body_bytes:
            raise ValueError(
                f"ROUTEGATE_MAX_PENDING_BODY_BYTES ({self.max_pending_body_bytes}) is smaller than ROUTEGATE_MAX_BODY_BYTES "
                f"({self.max_body_bytes}): the largest body allowed could never be read"
            )
        return self

    @model_validator(mode="after")
    def _fixed_routes_hold(self) -> Settings:
        """Without ROUTEGATE_OVERRIDE_KEYS every client may override, and so name any model."""
        if self.fixed_routes and self.allow_overrides and not self.override_keys:
            raise ValueError(
                "ROUTEGATE_FIXED_ROUTES with ROUTEGATE_ALLOW_OVERRIDES needs ROUTEGATE_OVERRIDE_KEYS: without them every "
                "client may override, and name any model"
            )
        return self

    @model_validator(mode="after")
    def _batch_wait_within_score_timeout(self) -> Settings:
        """A batch that waits as long as a request may wait for its score would score nothing in time."""
        if self.score_batch_wait_ms >= self.score_timeout * 1000:
            raise ValueError(
                f"ROUTEGATE_SCORE_BATCH_WAIT_MS ({self.score_batch_wait_ms:g}) is not below ROUTEGATE_SCORE_TIMEOUT "
                f"({self.score_timeout:g} s): every request would time out waiting for its batch"
            )
        return self

    @model_validator(mode="after")
    def _override_keys_are_client_keys(self) -> Settings:
        """With client keys, an override key that is not one of them could never be presented."""
        client_keys = {key.get_secret_value() for key in self.api_keys}
        if client_keys and any(key.get_secret_value() not in client_keys for key in self.override_keys):
            raise ValueError(
                "ROUTEGATE_OVERRIDE_KEYS holds a key that is not in ROUTEGATE_API_KEYS: a request with it is refused "
                "before it could override; add it to ROUTEGATE_API_KEYS too"
            )
        return self

    @model_validator(mode="after")
    def _router_pair_is_two_models(self) -> Settings:
        """The router scores one model against another: the same model twice has nothing to compare."""
        strong, weak = self.router_strong_model, self.router_weak_model
        if strong is not None and weak is not None and strong.strip().lower() == weak.strip().lower():
            raise ValueError(
                f"ROUTEGATE_ROUTER_STRONG_MODEL and ROUTEGATE_ROUTER_WEAK_MODEL both name {strong!r}: "
                "the router scores two different models"
            )
        return self

    @model_validator(mode="after")
    def _metrics_port_is_its_own(self) -> Settings:
        """ROUTEGATE_METRICS_PORT is a second listener: on the API's port it would take the port first."""
        if self.metrics_port is not None and self.metrics_port == self.port:
            raise ValueError(
                f"ROUTEGATE_METRICS_PORT ({self.metrics_port}) is ROUTEGATE_PORT: give /metrics another port, "
                "or unset it to serve /metrics on the API port"
            )
        return self

    @model_validator(mode="after")
    def _no_open_listener(self) -> Settings:
        """A non-loopback listener needs client keys unless ``allow_unauthenticated`` says otherwise."""
        if not self.api_keys and not self.allow_unauthenticated and not is_loopback(self.host):
            raise ValueError(
                f"host {self.host!r} is reachable from other machines and ROUTEGATE_API_KEYS is empty: anyone could "
                "spend the upstream keys. Set ROUTEGATE_API_KEYS, or ROUTEGATE_ALLOW_UNAUTHENTICATED=true to serve "
                "without client keys (e.g. behind an authenticating reverse proxy)."
            )
        return self

    @field_validator("api_keys", "override_keys", "metrics_key")
    @classmethod
    def _no_blank_keys(cls, value: list[SecretStr] | SecretStr | None) -> list[SecretStr] | SecretStr | None:
        """A blank key would match a bare ``Authorization: Bearer`` (e.g. an unset variable in a key
        list); one that is not printable ASCII could never be sent in an HTTP header as it is."""
        keys = value if isinstance(value, list) else [value] if value is not None else []
        if any(not key.get_secret_value().strip() for key in keys):
            raise ValueError("a client key is empty or blank: every key must have characters")
        if any(not key.get_secret_value().isascii() or not key.get_secret_value().isprintable() for key in keys):
            raise ValueError("a client key holds a character that is not printable ASCII: no client could send it")
        if any(key.get_secret_value() != key.get_secret_value().strip() for key in keys):
            raise ValueError("a client key has spaces around it, which no HTTP header keeps: remove them")
        return value

    @field_validator("target_share")
    @classmethod
    def _whole_percent(cls, value: float) -> float:
        if abs(value * 100 - round(value * 100)) > 1e-9:
            raise ValueError("must be a whole percent (e.g. 0.3 for 30%)")
        return round(value * 100) / 100

    @field_validator("models")
    @classmethod
    def _model_list(cls, value: list[ModelEntry]) -> list[ModelEntry]:
        check_models(value)
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _origins_as_browsers_send_them(cls, value: list[str]) -> list[str]:
        """Each origin as an ``Origin`` header reads it (``_as_origin``)."""
        return [_as_origin(origin) for origin in value]

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


def _as_origin(given: str) -> str:
    """``given`` as a browser's ``Origin`` header spells it: ``http(s)://host[:port]`` in lower case,
    without a trailing slash or its scheme's default port, the host in ASCII (punycode); ValueError
    for what no browser sends, which could never match: a wildcard, user, path, query or fragment."""
    text = given.strip().rstrip("/")
    parts = urlsplit(text)
    try:
        port = parts.port
        host = (parts.hostname or "").encode("idna").decode("ascii")
    except (ValueError, UnicodeError):
        host = ""
    if (
        parts.scheme.lower() not in ("http", "https")
        or not host
        or "*" in text
        or "@" in parts.netloc
        or parts.path
        or "?" in text
        or "#" in text
    ):
        raise ValueError(
            f"{given!r} is not an origin: http(s)://host[:port], as https://chat.example.com "
            "(each site by its own name: no wildcard, user, path or query)"
        )
    netloc = f"[{host}]" if ":" in host else host
    return _without_default_port(f"{parts.scheme.lower()}://{netloc}" + (f":{port}" if port is not None else ""))


def _without_default_port(origin: str) -> str:
    """``origin`` as a browser sends it: without its scheme's default port (``https://a:443`` is ``https://a``)."""
    for scheme, port in (("https://", ":443"), ("http://", ":80")):
        if origin.startswith(scheme) and origin.endswith(port):
            return origin.removesuffix(port)
    return origin


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: ``ROUTEGATE_`` variables that routegate reads but that are not settings
OTHER_ENV = (CONFIG_ENV, "ROUTEGATE_CACHE_DIR")
#: what Kubernetes sets for a Service named routegate(-...) in the same namespace (service links)
_SERVICE_LINK = re.compile(r"ROUTEGATE_(?:\w+_)?(?:SERVICE_HOST|SERVICE_PORT(?:_\w+)?|PORT_\d+_(?:TCP|UDP|SCTP)(?:_\w+)?)")


def _has_parts(annotation: Any) -> bool:
    """Whether a setting's parts can be given one variable each: a model's fields
    (``ROUTEGATE_STRONG__BASE_URL``) or a mapping's keys (``ROUTEGATE_ALIASES__THRIFTY``)."""
    return (isinstance(annotation, type) and issubclass(annotation, BaseModel)) or typing.get_origin(annotation) is dict


def unknown_variable_warnings(environ: Mapping[str, str]) -> list[str]:
    """One line per ``ROUTEGATE_`` environment variable that is no setting (so it is ignored:
    most likely a misspelling), with the nearest setting's name. A nested one under a setting
    with fields or keys (``ROUTEGATE_STRONG__...``, ``ROUTEGATE_ALIASES__...``) is checked by that
    setting; under any other (``ROUTEGATE_PORT__X``) it is ignored too, and named."""
    known = sorted({ENV_PREFIX + name.upper() for name in Settings.model_fields} | set(OTHER_ENV))
    nested = [ENV_PREFIX + name.upper() + "__" for name, field in Settings.model_fields.items() if _has_parts(field.annotation)]
    lines = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known or upper.startswith(tuple(nested)):
            continue
        if _SERVICE_LINK.fullmatch(upper) or re.fullmatch(r"(tcp|udp|sctp)://\S+", environ[name]):
            continue  # set by Kubernetes for a Service named routegate(-...): ROUTEGATE_REDIS_PORT=tcp://...
        nearest = difflib.get_close_matches(upper.removeprefix(ENV_PREFIX), [k.removeprefix(ENV_PREFIX) for k in known], n=1)
        hint = f" (did you mean {ENV_PREFIX}{nearest[0]}?)" if nearest else ""
        lines.append(f"{name} is not a routegate setting and is ignored{hint}")
    return lines


# a value without "://" that is meant for PostgreSQL: a scheme with a slash missing, or libpq keywords
_POSTGRES_LIKE = re.compile(
    r"^\s*postgres(ql)?(\+[\w-]+)?(:|//)|(^|\s)(host|hostaddr|dbname|password|user|port)\s*=", re.IGNORECASE
)


def store_kind(url: str) -> str:
    """``sqlite`` or ``postgresql``: the database a ``ROUTEGATE_FEEDBACK_DB`` value names (a path
    is an SQLite file; ``postgres://`` and SQLAlchemy's ``postgresql+psycopg://`` are PostgreSQL).
    ValueError naming only the scheme for any other ``scheme://``: a typo must not turn a PostgreSQL
    URL into a local file named after it, password and all."""
    scheme, separator, _ = url.partition("://")
    if not separator and _POSTGRES_LIKE.search(url):  # postgresql:/..., postgres//..., host=... password=...
        raise ValueError("looks like a PostgreSQL address but is not a postgresql://user:password@host/dbname URL")
    kind = scheme.lower().split("+")[0] if separator else "sqlite"
    if kind not in ("sqlite", "postgresql", "postgres"):
        shown = f" '{scheme}://'" if scheme.replace("+", "").replace("-", "").replace(".", "").isalnum() else ""
        raise ValueError(f"has an unknown scheme{shown}: use a file path, sqlite:///path or postgresql://...")
    if kind == "sqlite":
        return "sqlite"
    parts = urlsplit(url)
    if not _host_part_whole(parts):
        raise ValueError(
            "is not a postgresql:// URL that can be read; percent-encode any '/', '#', '?', '@' or ':' in its password"
        )
    return "postgresql"


def _host_part_whole(parts: SplitResult) -> bool:
    """Whether a URL's user, password, host and port part ends where it should: an unencoded '/',
    '?' or '#' in the password ends it early, leaving an '@' after it (``user:12/34@host``) or a
    port that is no number (``user:ab/cd@host`` reads ``ab`` as one)."""
    try:
        _ = parts.port
    except ValueError:
        return False
    return "@" not in parts.path + parts.query + parts.fragment


class SettingsError(Exception):
    """Settings that cannot be used; the message names each offending setting."""


def _config_problem(error: Exception) -> str:
    """What is wrong with a config file, without quoting its lines (they may hold keys)."""
    mark = getattr(error, "problem_mark", None)
    if isinstance(error, yaml.YAMLError):
        return "not valid YAML" + (f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else "")
    return "it must be a mapping of setting names to values"


def _env_name(location: tuple[str | int, ...]) -> str:
    """The variable that sets ``location``; inside a list, which its variable gives whole as JSON,
    the variable and the place in it: ``ROUTEGATE_MODELS[1].output_price``."""
    end = next((at for at, part in enumerate(location) if isinstance(part, int)), len(location))
    inside = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in location[end:])
    return ENV_PREFIX + "__".join(str(part).upper() for part in location[:end]) + inside


def _config_keys() -> set[str]:
    """The top-level keys of the config file in use (none without one, or one that is no mapping)."""
    named = os.environ.get(CONFIG_ENV)
    try:
        loaded = yaml.safe_load(Path(named).read_text(encoding="utf-8")) if named else None
    except (OSError, yaml.YAMLError):
        return set()
    return {str(key).lower() for key in loaded} if isinstance(loaded, dict) else set()


def _from_file(location: tuple[str | int, ...], file_keys: set[str]) -> bool:
    """Whether the setting at ``location`` comes from the config file: its top-level key is there,
    and no variable with a value (empty ones are ignored) names it or a setting holding it."""
    variables = {_env_name(location[:end]) for end in range(1, len(location) + 1)}
    given = any(value != "" and name.upper() in variables for name, value in os.environ.items())
    return bool(location) and str(location[0]).lower() in file_keys and not given


def _fields_at(location: tuple[str | int, ...]) -> list[str]:
    """The field names of the settings model at ``location`` (list positions skipped); none where it is no model."""
    model: type[BaseModel] = Settings
    for part in location:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        found = [kind for kind in (field.annotation, *typing.get_args(field.annotation)) if isinstance(kind, type)]
        nested = next((kind for kind in found if issubclass(kind, BaseModel)), None)
        if nested is None:
            return []
        model = nested
    return list(model.model_fields)


def _issue_line(issue: Mapping[str, Any], file_keys: set[str]) -> str:
    """One validation problem, named as the operator gave it: ``ROUTEGATE_X__Y`` or ``<config file>: x.y``."""
    location = tuple(issue["loc"])
    message = str(issue["msg"]).removeprefix("Value error, ")
    in_file = _from_file(location, file_keys)

    def named(at: tuple[str | int, ...]) -> str:
        return ".".join(str(part) for part in at) if in_file else _env_name(at)

    if issue["type"] == "extra_forbidden" and location:
        nearest = difflib.get_close_matches(str(location[-1]).lower(), _fields_at(location[:-1]), n=1)
        message = "not a routegate setting" + (f" (did you mean {named((*location[:-1], nearest[0]))}?)" if nearest else "")
    if not location:
        return message
    return f"{os.environ.get(CONFIG_ENV)}: {named(location)}: {message}" if in_file else f"{named(location)}: {message}"


def _unparsable(error: Exception) -> str:
    """pydantic-settings' error for a variable whose value cannot be parsed, naming the variable."""
    found = re.search(r'field "(\w+)" from source "(\w+)"', str(error))
    if found is None or found[2] != "EnvSettingsSource":
        return str(error)
    return f"{_env_name((found[1],))}: not valid JSON (a setting that holds a list or a mapping takes JSON, e.g. '[\"key-1\"]')"


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Read settings from the environment and ``config_file`` (YAML); raise SettingsError when invalid."""
    named = config_file if config_file is not None else os.environ.get(CONFIG_ENV)
    if named:  # given on the command line, or as ROUTEGATE_CONFIG by the operator
        path = Path(named)
        if not path.is_file():
            raise SettingsError(f"config file not found: {path}")
        os.environ[CONFIG_ENV] = str(path.resolve())
    try:
        return Settings(**overrides)
    except (yaml.YAMLError, ValueError) as error:  # a config file that is not YAML, or not a mapping
        if isinstance(error, pydantic_settings.SettingsError):  # e.g. a list setting that is not JSON
            raise SettingsError(f"invalid settings: {_unparsable(error)}") from None
        if not isinstance(error, ValidationError):
            if os.environ.get(CONFIG_ENV) is None:
                raise
            raise SettingsError(f"invalid config file {os.environ.get(CONFIG_ENV)}: {_config_problem(error)}") from None
        file_keys = _config_keys()
        lines = [_issue_line(issue, file_keys) for issue in error.errors(include_url=False, include_input=False)]
        if len(lines) == 1:
            raise SettingsError(f"invalid settings: {lines[0]}") from None
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None
