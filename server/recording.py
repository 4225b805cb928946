"""The record step: one request's outcome written to the books, once, after it ended.

Metrics count every outcome. Sticky memory is written for requests an upstream answered with a
2xx (a stream its client stopped too: the conversation went strong), the router's decision
counts and target-share feedback only for answers the client had whole, and the daily budget
for requests an upstream answered (budget spend: for any answer with
usage, reported or, for a 2xx without, estimated, and for a request whose client left while an
upstream had it, its prompt estimated; and for each failed try an upstream worked on, such as one
that timed out or whose answer was not JSON, its prompt and answer bytes estimated); requests
refused before an upstream (429, 400, 499 ...) leave no trace there.
With Redis (``ROUTEGATE_REDIS_URL``) the books are those of all replicas (server/shared_*.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from server import metrics
from server.cost_targets import CostTargets
from server.decision import Decision
from server.ladder import Ladder
from server.shared_sticky import SharedSticky
from server.shared_targets import SharedBudget, SharedTargets
from server.upstream import Upstream

log = logging.getLogger("routegate.proxy")


@dataclass(frozen=True)
class Outcome:
    """How one request ended: the final decision, the upstream that answered or had the request
    when its client left (None: none), the status the client got, when it arrived, when its last
    try was sent, the usage reported and, for a 2xx answer without a usage object or a client
    that left, its estimated ``(prompt, completion)`` tokens."""

    decision: Decision | None
    upstream: Upstream | None
    status: int
    started: float
    sent_at: float | None = None
    usage: object = None
    upstream_status: int | None = None  # what the upstream answered; None: no upstream answered
    estimated_tokens: tuple[int, int] | None = None


def _upstream_answered(outcome: Outcome) -> bool:
    """Whether an upstream answered with a 2xx (its stream may still have been cut or left)."""
    return outcome.upstream_status is not None and 200 <= outcome.upstream_status < 300


def _answered(outcome: Outcome) -> bool:
    """Whether the client had a whole answer: an upstream's 2xx relayed as 2xx (a stream cut by its
    upstream, the shutdown or its client's leaving is spend, not an answer for the books)."""
    return _upstream_answered(outcome) and 200 <= outcome.status < 300


@dataclass(frozen=True)
class Usage:
    """An answer's ``(prompt, completion)`` tokens (reported, or estimated when none were) and their
    cost in USD, real and on the most capable upstream."""

    tokens: tuple[int, int]
    cost: float
    all_best_cost: float


class Recorder:
    """Writes outcomes to the metrics and the books."""

    def __init__(
        self,
        ladder: Ladder,
        targets: SharedTargets | None = None,
        sticky: SharedSticky | None = None,
        budget: SharedBudget | None = None,
        cost_targets: CostTargets | None = None,
    ) -> None:
        self.ladder = ladder
        best = ladder.entry(ladder.best)
        self.best_prices = (best.input_price, best.output_price)  # the all-best-model counterfactual
        self.targets = targets
        self.cost_targets = cost_targets  # target routes among more than two models
        self.sticky = sticky
        self.budget = budget

    async def record(self, outcome: Outcome) -> None:
        """Count ``outcome``; update the books if an upstream answered it."""
        now = time.monotonic()
        decision, upstream = outcome.decision, outcome.upstream
        router = decision.router if decision is not None else "none"
        tier, model = (upstream.tier, upstream.model) if upstream is not None else ("none", "none")
        metrics.REQUESTS.labels(router, tier, model, str(outcome.status)).inc()
        if upstream is not None and outcome.sent_at is not None:
            metrics.UPSTREAM_SECONDS.labels(upstream.tier, upstream.model).observe(now - outcome.sent_at)
        if upstream is not None and (outcome.upstream_status is not None or outcome.estimated_tokens is not None):
            usage = self._usage(upstream, outcome.usage, outcome.estimated_tokens)
            answered = _answered(outcome)
            if decision is not None and _upstream_answered(outcome):
                await self._remember(decision)
                if answered:
                    await self._keep_books(decision, upstream, usage)
            await self._charge(upstream, usage, answered=answered)  # after the books: count, then cost
        log.info(
            "request_id=%s router=%s score=%s tier=%s model=%s status=%d duration_ms=%.1f",
            decision.request_id if decision is not None else "-",
            router,
            "-" if decision is None or decision.score is None else f"{decision.score:.4f}",
            tier,
            model,
            outcome.status,
            (now - outcome.started) * 1000,
        )

    async def charge_spent(self, spent: list[tuple[Upstream, tuple[int, int]]]) -> None:
        """Meter and charge failed tries that an upstream worked on, each at its estimated tokens."""
        for upstream, tokens in spent:
            await self._charge(upstream, self._usage(upstream, None, tokens), answered=False)

    def _usage(self, upstream: Upstream, reported: object, estimated: tuple[int, int] | None) -> Usage | None:
        """The tokens of an upstream's ``usage`` object, else the estimated ones, and their costs;
        None without either."""
        tokens = metrics.usage_tokens(reported)
        if tokens is None and estimated is not None and any(estimated):
            tokens = estimated
            metrics.USAGE_ESTIMATED.labels(upstream.tier, upstream.model).inc()
        if tokens is None:
            return None
        return Usage(tokens, metrics.tokens_cost(tokens, upstream.prices), metrics.tokens_cost(tokens, self.best_prices))

    async def _charge(self, upstream: Upstream, usage: Usage | None, answered: bool = True) -> None:
        """Meter an answer's tokens and costs; charge the daily budget (spend on any upstream but
        the cheapest; nothing without usage). A failed try (not ``answered``) is spend, but not a
        request's strong-tier price: the all-strong counterfactual (metric and budget projection)
        counts answers only, so a failed cheap try lowers the savings rather than raising them."""
        cost, all_best_cost = (usage.cost, usage.all_best_cost if answered else 0.0) if usage is not None else (0.0, 0.0)
        if usage is not None:
            metrics.record_usage(upstream.tier, upstream.model, usage.tokens, (cost, all_best_cost))
        if self.budget is not None:
            charged = "weak" if upstream.tier == self.ladder.lowest_price else "strong"
            await self.budget.record_cost(charged, cost, all_best_cost)
            metrics.report_budget_remaining(self.budget.remaining_usd)

    async def _remember(self, decision: Decision) -> None:
        """Sticky memory: a conversation answered by the more capable tier keeps it for later turns."""
        if self.sticky is None or decision.sticky_key is None:
            return
        kept = max(decision.tier, decision.chosen, key=self.ladder.rank)  # the more capable, though a fallback answered
        if self.ladder.pair and kept == self.ladder.best:
            await self.sticky.remember(decision.sticky_key)
        elif not self.ladder.pair and self.ladder.rank(kept) > 0:  # later turns: never a less capable one
            await self.sticky.remember(decision.sticky_key, kept, self.ladder.by_capability())
        metrics.STICKY_CONVERSATIONS.set(len(self.sticky))

    async def _keep_books(self, decision: Decision, upstream: Upstream, usage: Usage | None) -> None:
        """The router's decision counts and target feedback for an answer the client had whole."""
        # a threshold route's own choice (not forced, sticky or redirected); a target route's counts apart
        threshold = decision.threshold if decision.reason == "score" and decision.target is None else None
        if threshold is not None:  # fallback or not
            metrics.ROUTER_THRESHOLD.labels(decision.router).set(threshold)
            metrics.THRESHOLD_DECISIONS.labels(decision.router, metrics.threshold_label(threshold), decision.chosen).inc()
        if decision.target is None or self.targets is None:
            return
        effective = decision.effective_target if decision.effective_target is not None else decision.target
        if self.cost_targets is not None:
            self._record_cost_share(decision, effective, upstream, usage)
            realised = self.cost_targets.realised_share(decision.router, decision.target)
        else:
            chose_strong = decision.chosen == self.ladder.best  # the controller steers choices, not fallbacks
            await self.targets.record(decision.router, decision.target, effective, chose_strong, decision.score)
            realised = self.targets.realised_share(decision.router, decision.target)
        if self.budget is not None:
            self.budget.count_request()
        labels = (decision.router, f"{decision.target:g}")
        for tier in self.ladder.names:  # every tier's series from the route's first answer: their first counts show in increase()
            metrics.TARGET_DECISIONS.labels(*labels, tier)
        metrics.TARGET_DECISIONS.labels(*labels, decision.chosen).inc()
        metrics.TARGET_SHARE.labels(*labels).set(decision.target)
        metrics.TARGET_EFFECTIVE_SHARE.labels(*labels).set(effective)
        if realised is not None:
            metrics.TARGET_REALISED_SHARE.labels(*labels).set(realised)
        if decision.threshold is not None and decision.reason == "score":
            metrics.TARGET_THRESHOLD.labels(*labels).set(decision.threshold)

    def _record_cost_share(self, decision: Decision, effective: float, upstream: Upstream, usage: Usage | None) -> None:
        """A target route among more than two models: its cost against the all-best cost, from
        the reported tokens (without usage: a typical request's, at the two models' prices)."""
        assert self.cost_targets is not None and decision.target is not None
        if usage is not None:
            costs, tokens = (usage.cost, usage.all_best_cost), usage.tokens
        else:
            unit = self.cost_targets.unit_costs()
            costs, tokens = (unit[self.ladder.names.index(upstream.tier)], unit[self.ladder.best_index]), None
        self.cost_targets.record(decision.router, decision.target, effective, decision.beaten, costs, tokens)
