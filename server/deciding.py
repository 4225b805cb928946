"""The decide step: which upstream a request goes to and why, as an immutable Decision.

With two upstreams (the two tiers, or two ``ROUTEGATE_MODELS`` entries) the router's pair score
is compared with the threshold: the most capable (``strong``) when ``score >= t``, else the other
(``weak``). With more, the router's per-model logits go through ``routers.multi_model.choose``:
the cheapest model whose probability of being beaten by the most capable is below ``t``.

Deciding reads the books (sticky memory, target thresholds, the budget) but writes none of
them: they are written once, from the outcome (server/recording.py). With Redis
(``ROUTEGATE_REDIS_URL``) the books are those of all replicas (server/shared_*.py). A request
whose score is not ready within ``score_timeout`` (or whose router's queue is full) gets the
configured scoring-overload outcome: a 429 (``shed``) or the weak/strong tier unscored.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

import numpy as np
from starlette.datastructures import Headers

from routers.multi_model import beaten_from_logits, choose
from server import metrics
from server.chat_request import routed_text
from server.conversations import CONVERSATION_HEADER, conversation_keys
from server.cost_targets import CostTargets
from server.decision import Decision
from server.errors import APIError, overloaded, retry_after
from server.ladder import Ladder
from server.model_names import Target
from server.overrides import Override
from server.scoring import ScoreQueueFull, Scorer, ScorerPool
from server.settings import Settings
from server.shared_sticky import SharedSticky
from server.shared_targets import SharedBudget, SharedTargets
from server.targets import seconds_to_next_utc_day

log = logging.getLogger("routegate.deciding")


class Decider:
    """Turns a resolved model name and a request into a Decision."""

    def __init__(
        self,
        settings: Settings,
        ladder: Ladder,
        scorers: ScorerPool,
        targets: SharedTargets | None = None,
        sticky: SharedSticky | None = None,
        budget: SharedBudget | None = None,
        cost_targets: CostTargets | None = None,
    ) -> None:
        self.settings = settings
        self.ladder = ladder
        self.cost_targets = cost_targets  # target routes among more than two models
        #: what ``strong`` / ``weak`` (overrides, the scoring-overload outcome) stand for: among
        #: more than two models, ``weak`` is the cheapest by price, even when it is the most capable
        self.tiers = {"strong": ladder.best, "weak": ladder.cheapest if ladder.pair else ladder.lowest_price}
        self.scorers = scorers
        self.targets = targets
        self.sticky = sticky if settings.route_on == "sticky" else None
        self.budget = budget
        self._overload_retry_after = retry_after(settings.score_timeout)

    def strong_affordable(self) -> bool:
        """False once the daily budget is spent (as read by ``decide``): no request may go (or fall
        back) to an upstream other than the cheapest."""
        return self.budget is None or self.budget.remaining_usd > 0

    async def decide(
        self, route: Target, payload: dict[str, Any], headers: Headers, client: str, request_id: str, override: Override
    ) -> Decision:
        """The tier for this request (``client``: its client key's fingerprint, which keeps its sticky
        conversations and cached scores apart); 429 when scoring is overloaded (shed) or the budget refuses."""
        if self.budget is not None:
            await self.budget.refresh()  # today's spend over all replicas (one Redis read; none in-process)
            metrics.report_budget_remaining(self.budget.remaining_usd)  # a new UTC day, others' spend
        decision = await self._choose(route, payload, headers, client, request_id, override)
        if decision.tier != self.ladder.lowest_price and not self.strong_affordable():
            if self.settings.budget_exhausted == "reject":
                metrics.REJECTED.labels("budget_exhausted").inc()
                raise APIError(
                    429,
                    "routegate's daily budget for the strong tier is spent; retry after 00:00 UTC or use a weaker model.",
                    type="insufficient_quota",
                    code="budget_exhausted",
                    # the openai SDKs retry a 429 at once unless told not to: it cannot succeed before the new day
                    headers={"retry-after": retry_after(seconds_to_next_utc_day(time.time())), "x-should-retry": "false"},
                )
            decision = dataclasses.replace(decision, tier=self.ladder.lowest_price, reason="budget", quality=None)
        return decision

    async def _choose(
        self, route: Target, payload: dict[str, Any], headers: Headers, client: str, request_id: str, override: Override
    ) -> Decision:
        if route.tier is not None:
            return Decision(router="none", tier=route.tier, reason="direct", request_id=request_id)
        assert route.router is not None
        previous = sticky_key = None
        if self.sticky is not None:
            keys = conversation_keys(payload["messages"], headers.get(CONVERSATION_HEADER), client)
            previous, sticky_key = keys.previous, keys.current
        effective = None
        if route.target is not None and self.targets is not None:
            effective = self.targets.effective_target(route.target)
        base = Decision(
            router=route.router,
            tier=self.ladder.cheapest,
            reason="score",
            request_id=request_id,
            target=route.target,
            effective_target=effective,
            sticky_key=sticky_key,
        )
        if override.tier is not None:
            return dataclasses.replace(base, tier=self.tiers[override.tier], reason="forced")
        remembered = await self._remembered(previous)
        if remembered == self.ladder.best:
            return dataclasses.replace(base, tier=remembered, reason="sticky")
        if self.ladder.pair:
            score: float | tuple[float, ...] | None = await self._score(route.router, payload, client)
        else:
            score = await self._score(route.router, payload, client, per_model=True)
        if score is None:
            unscored = dataclasses.replace(base, tier=self.tiers[self.settings.scoring_overload], reason="unscored")
            return self._not_below(unscored, remembered)
        if override.threshold is not None:
            threshold, reason = override.threshold, "forced"
        elif route.target is not None and self.cost_targets is not None:
            share = self.targets.effective_target(route.target) if self.targets is not None else route.target
            threshold, reason = self.cost_targets.threshold(route.router, route.target, share), "score"
            base = dataclasses.replace(base, effective_target=share)
        elif route.target is not None and self.targets is not None:
            chosen = await self.targets.decide(route.router, route.target)
            threshold, reason = chosen.threshold, "score"
            base = dataclasses.replace(base, effective_target=chosen.effective_target)
        else:
            assert route.threshold is not None
            threshold, reason = route.threshold, "score"
        if isinstance(score, float):
            tier = self.ladder.best if score >= threshold else self.ladder.cheapest
            return dataclasses.replace(base, tier=tier, reason=reason, score=score, threshold=threshold)
        return self._not_below(self._choose_model(base, score, threshold, reason), remembered)

    def _not_below(self, decision: Decision, remembered: str | None) -> Decision:
        """``decision``, or the sticky conversation's earlier upstream when that is more capable:
        a later turn never goes to a less capable one."""
        if remembered is not None and self.ladder.rank(remembered) > self.ladder.rank(decision.tier):
            return dataclasses.replace(decision, tier=remembered, reason="sticky", quality=None)
        return decision

    async def _remembered(self, previous: str | None) -> str | None:
        """The upstream a sticky conversation went to before (two upstreams: the strong one only)."""
        if self.sticky is None:
            return None
        if self.ladder.pair:
            return self.ladder.best if await self.sticky.is_strong(previous) else None
        name = await self.sticky.recall(previous, self.ladder.by_capability())
        return name if name in self.ladder.names else None

    def _choose_model(self, base: Decision, logits: tuple[float, ...], threshold: float, reason: str) -> Decision:
        """``routers.multi_model.choose`` on one prompt's logits (ladder order). Its score, as with
        two tiers, is the most capable model's predicted chance of beating the cheapest one
        (``score >= threshold``: not the cheapest), observed in ``routegate_router_score``."""
        best = self.ladder.best_index
        beaten = beaten_from_logits(np.array([logits]), best)
        chosen = int(choose(beaten, self.ladder.prices, best, threshold)[0])
        score = float(beaten[0, self.ladder.cheapest_index])
        metrics.ROUTER_SCORE.labels(base.router).observe(score)
        return dataclasses.replace(
            base,
            tier=self.ladder.names[chosen],
            reason=reason,
            score=score,
            threshold=threshold,
            quality=1.0 - float(beaten[0, chosen]),
            beaten=tuple(float(value) for value in beaten[0]),
        )

    async def _score(
        self, router: str, payload: dict[str, Any], client: str, per_model: bool = False
    ) -> float | tuple[float, ...] | None:
        """The router's score (``per_model``: its logit per ladder model), cached in ``client``'s
        scope (no client learns what another sent); None when scoring is overloaded and the
        overload outcome routes unscored."""
        text = routed_text(
            payload["messages"], self.settings.route_on, self.settings.conversation_turns, self.settings.max_router_chars
        )
        scorer: Scorer | None = None
        try:
            async with asyncio.timeout(self.settings.score_timeout):  # a router still loading counts against it
                scorer = await self.scorers.get(router)
                return await (scorer.model_logits(text, client) if per_model else scorer.score(text, client))
        except TimeoutError:
            reason = "timeout" if scorer is not None else "loading"
        except APIError:
            raise  # the router could not be loaded: its 503
        except ScoreQueueFull:
            reason = "queue_full"
        except Exception:
            log.exception("router %s failed", router)
            raise APIError(500, f"The router '{router}' failed.", type="server_error", code="router_error") from None
        metrics.UNSCORED.labels(router, reason).inc()
        if self.settings.scoring_overload != "shed":
            return None
        metrics.REJECTED.labels("scoring_overload").inc()
        state = "still loading" if reason == "loading" else "overloaded"
        raise overloaded(f"routegate's router '{router}' is {state}", self._overload_retry_after)
