"""Prometheus metrics, named after prometheus-client's conventions (``_total``, ``_seconds``, USD).

Set ``PROMETHEUS_MULTIPROC_DIR`` before this module is imported (``routegate serve --workers N``
does) and every worker's ``/metrics`` reports the sum over all workers.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

from server import metric_files

disable_created_metrics()

UPSTREAM_FAILURE_REASONS = (
    "connect",
    "timeout",
    "protocol",
    "http_auth",
    "http_not_found",
    "http_redirect",
    "http_429",
    "http_5xx",
    "invalid_response",
    "too_large",
    "stream_cut",
    "stream_ignored",
    "not_event_stream",
    "stream_error",
)
# up to ROUTEGATE_TOTAL_TIMEOUT (300 s): a long stream is measured, not clipped to the top bucket
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 180, 300)
SCORE_BUCKETS = tuple(round(0.05 * step, 2) for step in range(1, 21))

REQUESTS = Counter(
    "routegate_requests_total",
    "Chat completion requests answered, by router, serving tier (the upstream's name), upstream model and HTTP status.",
    ["router", "tier", "model", "status"],
)
ROUTER_SCORE = Histogram(
    "routegate_router_score",
    "Router scores: the strong (most capable) model's predicted probability of beating the weak (cheapest) one.",
    ["router"],
    buckets=SCORE_BUCKETS,
)
ROUTER_THRESHOLD = Gauge(
    "routegate_router_threshold",
    "Threshold of the latest answer (had whole by its client) of a threshold route decided by score, by router "
    "(not forced thresholds; target routes: routegate_target_threshold).",
    ["router"],
    multiprocess_mode="mostrecent",
)
MOST_CAPABLE_TIER = Gauge(
    "routegate_most_capable_tier_info",
    "1 for the tier of the most capable upstream (strong with two tiers): the tier a strong-call share counts.",
    ["tier"],
    multiprocess_mode="livemax",
)
ROUTING_SECONDS = Histogram(
    "routegate_routing_duration_seconds",
    "Time to score a request with its router, cache hits included.",
    ["router"],
    buckets=LATENCY_BUCKETS,
)
SCORE_CACHE_LOOKUPS = Counter(
    "routegate_score_cache_lookups_total", "Score cache look-ups, by router and result (hit|miss).", ["router", "result"]
)
UPSTREAM_SECONDS = Histogram(
    "routegate_upstream_duration_seconds",
    "Time from sending a request's first try upstream to its answer's last byte (a stream is read as fast as its "
    "client takes it) or to the failure that ended its tries, retries and their waits included, by tier and model.",
    ["tier", "model"],
    buckets=LATENCY_BUCKETS,
)
UPSTREAM_TTFB_SECONDS = Histogram(
    "routegate_upstream_ttfb_seconds",
    "Time from sending a request upstream to the first byte of its body (of a stream: its first event), by tier and model.",
    ["tier", "model"],
    buckets=LATENCY_BUCKETS,
)
TOKENS = Counter(
    "routegate_tokens_total",
    "Tokens reported in upstream usage (estimated where none was reported), by tier, model and kind (prompt|completion).",
    ["tier", "model", "kind"],
)
COST_USD = Counter("routegate_cost_usd_total", "Cost in USD of the tokens used, at the configured prices.", ["tier", "model"])
ALL_STRONG_COST_USD = Counter(
    "routegate_all_strong_cost_usd_total",
    "Cost in USD the same answers' tokens would have had on the most capable upstream (strong with two tiers): "
    "the all-best-model counterfactual (failed tries, and streams cut or left by their client, are not counted).",
    ["tier", "model"],
)
USAGE_ESTIMATED = Counter(
    "routegate_usage_estimated_total",
    "Answers the upstream reported no usage for (a stream the client left or that was cut, an upstream that "
    "omits usage), requests whose client left once an upstream had the whole prompt, and failed tries an upstream "
    "worked on, whose tokens and cost were estimated, by tier and model.",
    ["tier", "model"],
)
FALLBACKS = Counter(
    "routegate_fallbacks_total", "Requests sent to a fallback upstream after failures.", ["from_tier", "to_tier", "reason"]
)
UPSTREAM_ERRORS = Counter("routegate_upstream_errors_total", "Failed upstream attempts, by tier and reason.", ["tier", "reason"])
UPSTREAM_RETRIES = Counter(
    "routegate_upstream_retries_total", "Upstream attempts repeated after a failure, by tier and reason.", ["tier", "reason"]
)
TARGET_SHARE = Gauge(
    "routegate_target_share",
    "Strong share a target route asks for (router-<router>-<percent>%), by router and target.",
    ["router", "target"],
    multiprocess_mode="max",
)
TARGET_EFFECTIVE_SHARE = Gauge(
    "routegate_target_effective_share",
    "Strong share a target route aims at after the daily budget tightened it.",
    ["router", "target"],
    multiprocess_mode="mostrecent",
)
TARGET_REALISED_SHARE = Gauge(
    "routegate_target_realised_share",
    "Strong share of a target route's recent decisions (its window), as of its latest request.",
    ["router", "target"],
    multiprocess_mode="mostrecent",
)
TARGET_THRESHOLD = Gauge(
    "routegate_target_threshold",
    "Threshold a target route compared its latest score with.",
    ["router", "target"],
    multiprocess_mode="mostrecent",
)
STICKY_CONVERSATIONS = Gauge(
    "routegate_sticky_conversations",
    "Conversations remembered as strong (route_on=sticky), summed over live workers.",
    multiprocess_mode="livesum",
)


@functools.cache
def shared_state_up() -> Gauge:
    """``routegate_shared_state_up``, made when a gateway first uses Redis: a gateway without
    Redis exports no such series (an unlabelled gauge made at import would read 0, "down")."""
    return Gauge(
        "routegate_shared_state_up",
        "1 while shared state (ROUTEGATE_REDIS_URL) answers, 0 while in-process state stands in; absent without Redis.",
        multiprocess_mode="livemin",
    )


SHARED_STATE_ERRORS = Counter(
    "routegate_shared_state_errors_total",
    "Shared-state (Redis) operations that failed or timed out and fell back to in-process state, by operation.",
    ["op"],
)
SHARED_STATE_BUSY = Counter(
    "routegate_shared_state_busy_total",
    "Shared-state (Redis) operations decided in-process because every Redis connection of the process stayed busy "
    "for the operation's deadline (Redis not counted as failed), by operation.",
    ["op"],
)
IN_FLIGHT = Gauge("routegate_requests_in_flight", "Chat completion requests being handled.", multiprocess_mode="livesum")

UPSTREAM_ACTIVE = Gauge(
    "routegate_upstream_requests_active",
    "Requests holding one of the ROUTEGATE_MAX_CONCURRENT_REQUESTS upstream slots.",
    multiprocess_mode="livesum",
)
QUEUED = Gauge("routegate_requests_queued", "Requests waiting for an upstream slot.", multiprocess_mode="livesum")
REJECTED_REASONS = ("queue_full", "queue_timeout", "body_budget_full", "scoring_overload", "budget_exhausted", "shutting_down")
REJECTED = Counter(
    "routegate_requests_rejected_total",
    f"Requests refused before reaching an upstream, by reason ({'|'.join(REJECTED_REASONS)}).",
    ["reason"],
)
BODY_BYTES_PENDING = Gauge(
    "routegate_request_body_bytes_pending",
    "Bytes of request bodies held by the requests being handled (read, parsed, queued or answered), of the "
    "ROUTEGATE_MAX_PENDING_BODY_BYTES each process allows.",
    multiprocess_mode="livesum",
)
HTTP_REFUSED_REASONS = ("invalid_http", "headers_too_large", "head_timeout", "pipelined")
HTTP_REFUSED = Counter(
    "routegate_http_refused_total",
    f"Requests answered by the HTTP layer before the app saw them, by reason ({'|'.join(HTTP_REFUSED_REASONS)}).",
    ["reason"],
)
UNSCORED_REASONS = ("timeout", "queue_full", "loading")
UNSCORED = Counter(
    "routegate_scoring_overload_total",
    f"Requests whose router could not score them in time, by router and reason ({'|'.join(UNSCORED_REASONS)}).",
    ["router", "reason"],
)
THRESHOLD_DECISIONS = Counter(
    "routegate_threshold_decisions_total",
    "Answered requests that threshold routes (router-<router>-<threshold>) sent where their router's score said "
    "(not sticky, forced, unscored or budget-redirected ones), by router, threshold (to two decimals) and the tier "
    "the score chose (a fallback's answer counts under the tier it stood in for).",
    ["router", "threshold", "tier"],
)
TARGET_DECISIONS = Counter(
    "routegate_target_decisions_total",
    "Answered requests of a target route, by router, target and the tier chosen (a fallback's answer counts under "
    "the tier it stood in for).",
    ["router", "target", "tier"],
)
UPSTREAM_RESPONSES_OPEN = Gauge(
    "routegate_upstream_responses_open",
    "Upstream HTTP responses open (headers received, body not yet closed), by tier.",
    ["tier"],
    multiprocess_mode="livesum",
)
EVENT_LOOP_TASKS = Gauge(
    "routegate_event_loop_tasks",
    "asyncio tasks alive in the serving process, sampled every second and when the API port's /metrics is read.",
    multiprocess_mode="livesum",
)


def threshold_label(threshold: float) -> str:
    """A threshold in [0, 1] as a label value, to two decimals: at most 101 per router, however
    many thresholds clients name."""
    return f"{round(threshold, 2):g}"


@functools.cache
def budget_remaining_usd() -> Gauge:
    """``routegate_budget_remaining_usd``, made when a gateway with a daily budget first reads it:
    a gateway without one exports no such series (an unlabelled gauge would read 0, "spent")."""
    return Gauge(
        "routegate_budget_remaining_usd",
        "Daily strong-tier budget left today (UTC), summed over live workers; absent without a budget.",
        multiprocess_mode="livesum",
    )


class _BudgetPart:
    """This process's part of ``routegate_budget_remaining_usd``, which sums the live processes. It
    counts while the process is ready and not stopping, and reads 0 otherwise: a SIGHUP replacement
    loading its routers, and a retired worker finishing its last requests, live beside the worker
    that reports that part."""

    remaining_usd = 0.0
    counted = False

    def show(self) -> None:
        budget_remaining_usd().set(self.remaining_usd if self.counted else 0.0)


_BUDGET_PART = _BudgetPart()


def report_budget_remaining(remaining_usd: float) -> None:
    """The budget left today (this process's part of it), shown while the part is counted."""
    _BUDGET_PART.remaining_usd = remaining_usd
    _BUDGET_PART.show()


def count_budget_part(counted: bool) -> None:
    """Whether this process's part of the budget left counts (ready and not stopping)."""
    _BUDGET_PART.counted = counted
    _BUDGET_PART.show()


def initialise(
    routers: Iterable[str],
    models: Mapping[str, str],
    fallbacks: Mapping[str, str],
    most_capable: str,
    thresholds: Collection[float] = (),
) -> None:
    """Create at zero the series known at start-up (``models`` maps tier -> upstream model,
    ``fallbacks`` each tier to its first fallback, ``thresholds`` those of auto and the aliases),
    and mark the ``most_capable`` tier.

    A counter series that first appears with its first increment loses that increment in
    ``rate()``/``increase()``; starting at zero, the first request, error and fallback count.
    """
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # a worker's gauge cannot be cleared (nor needs it: set once)
        MOST_CAPABLE_TIER.clear()
    MOST_CAPABLE_TIER.labels(most_capable).set(1)
    for reason in HTTP_REFUSED_REASONS:
        HTTP_REFUSED.labels(reason)
    for reason in REJECTED_REASONS:
        REJECTED.labels(reason)
    for router in routers:  # histograms too: a router's first scores must show in rate()
        ROUTING_SECONDS.labels(router)
        ROUTER_SCORE.labels(router)
        for reason in UNSCORED_REASONS:
            UNSCORED.labels(router, reason)
    for tier, model in models.items():
        for router in (*routers, "none"):
            REQUESTS.labels(router, tier, model, "200")
        for router in routers:
            for threshold in thresholds:
                THRESHOLD_DECISIONS.labels(router, threshold_label(threshold), tier)
        for kind in ("prompt", "completion"):
            TOKENS.labels(tier, model, kind)
        COST_USD.labels(tier, model)
        ALL_STRONG_COST_USD.labels(tier, model)
        USAGE_ESTIMATED.labels(tier, model)
        for reason in UPSTREAM_FAILURE_REASONS:
            UPSTREAM_ERRORS.labels(tier, reason)
            UPSTREAM_RETRIES.labels(tier, reason)
            FALLBACKS.labels(tier, fallbacks[tier], reason)


def count_refused(status: int) -> None:
    """Count a chat request refused before routing (``none`` labels)."""
    REQUESTS.labels("none", "none", "none", str(status)).inc()


def render_metrics() -> tuple[bytes, str]:
    """The metrics in Prometheus text format, summed over workers in multiprocess mode."""
    try:
        EVENT_LOOP_TASKS.set(len(asyncio.all_tasks()))
    except RuntimeError:  # no running loop: nothing to sample
        pass
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        with metric_files.reading(Path(directory)):  # no ended worker's files folded away meanwhile
            return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


MAX_TOKENS = 2**31 - 1  # more than any answer holds, and what a database INTEGER column holds


def token_count(value: object) -> int | None:
    """A ``usage`` field's token count, at most ``MAX_TOKENS``; None when it is not a count."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return min(value, MAX_TOKENS)


def usage_tokens(usage: object) -> tuple[int, int] | None:
    """The prompt and completion tokens of an upstream ``usage`` object; None without any."""
    if not isinstance(usage, dict):
        return None
    prompt = token_count(usage.get("prompt_tokens")) or 0
    completion = token_count(usage.get("completion_tokens")) or 0
    return (prompt, completion) if prompt or completion else None


def reported_tokens(usage: object) -> tuple[int, int] | None:
    """The prompt and completion tokens an upstream ``usage`` object counts, zeros included; None
    when it counts none (``{"total_tokens": 9}``, ``{}``, no object): such an answer is charged an estimate."""
    if not isinstance(usage, dict):
        return None
    prompt, completion = (token_count(usage.get(key)) for key in ("prompt_tokens", "completion_tokens"))
    return None if prompt is None and completion is None else (prompt or 0, completion or 0)


def tokens_cost(tokens: tuple[int, int], prices: tuple[float, float]) -> float:
    """USD of ``(prompt, completion)`` tokens at ``(input, output)`` USD per 1M tokens."""
    return (tokens[0] * prices[0] + tokens[1] * prices[1]) / 1e6


def record_usage(tier: str, model: str, tokens: tuple[int, int], costs: tuple[float, float]) -> None:
    """Count an answer's ``(prompt, completion)`` tokens and its ``(real, all-strong)`` costs in USD."""
    TOKENS.labels(tier, model, "prompt").inc(tokens[0])
    TOKENS.labels(tier, model, "completion").inc(tokens[1])
    COST_USD.labels(tier, model).inc(costs[0])
    ALL_STRONG_COST_USD.labels(tier, model).inc(costs[1])
