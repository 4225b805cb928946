"""Metrics of learning from traffic: shadow requests, judgements, user feedback, their cost and the store."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Gauge

TIERS = ("strong", "weak")
VERDICTS = ("chosen_better", "tie", "other_better", "unparsable")
SHADOW_OUTCOMES = (
    "judged",
    "excluded",
    "too_large",
    "dropped",
    "over_budget",
    "no_answer",
    "unanswered",
    "shadow_failed",
    "judge_failed",
    "abandoned",
)
RATINGS = ("up", "down", "score")

SHADOW_REQUESTS = Counter(
    "routegate_shadow_requests_total",
    "Sampled answers sent to the tier that was not chosen, by that tier and outcome.",
    ["tier", "outcome"],
)
JUDGEMENTS = Counter(
    "routegate_judgements_total",
    "Judged pairs (chosen tier's answer vs the other tier's), by router, chosen tier and verdict.",
    ["router", "chosen_tier", "verdict"],
)
FEEDBACK = Counter(
    "routegate_feedback_total", "User feedback posts stored, by rating (up|down|score); a repeat post counts again.", ["rating"]
)
SHADOW_COST_USD = Counter(
    "routegate_shadow_cost_usd_total",
    "Cost in USD of shadow and judge calls (never part of routegate_cost_usd_total), by kind and model.",
    ["kind", "model"],
)
STORE_ERRORS = Counter(
    "routegate_feedback_store_errors_total",
    "Feedback store writes lost, by reason (queue_full|unavailable|no_decision).",
    ["reason"],
)
STORE_QUEUED = Gauge(
    "routegate_feedback_store_queued", "Feedback store writes waiting for the database.", multiprocess_mode="livesum"
)


def initialise(routers: Iterable[str], models: dict[str, str], judge_model: str) -> None:
    """Create the series at zero, so that their first increments show in ``increase()``."""
    for router in routers:
        for tier in TIERS:
            for verdict in VERDICTS:
                JUDGEMENTS.labels(router, tier, verdict)
    for tier in TIERS:
        for outcome in SHADOW_OUTCOMES:
            SHADOW_REQUESTS.labels(tier, outcome)
        SHADOW_COST_USD.labels("shadow", models[tier])
    SHADOW_COST_USD.labels("judge", judge_model)
    for rating in RATINGS:
        FEEDBACK.labels(rating)
    for reason in ("queue_full", "unavailable", "no_decision"):
        STORE_ERRORS.labels(reason)
