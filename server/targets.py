"""Strong-call targets: a threshold that keeps adjusting so that a share of the live traffic goes
to the strong tier, and an optional daily budget that tightens that share.

Each ``ShareController`` (one per router and target share, per process) keeps the last
``window`` router scores in arrival order and sorted. Its threshold is the score above which
the wanted share of that window lies (a sliding-window quantile: bounded memory, follows shifts
in the traffic mix), corrected by feedback from the decisions it actually made: a leaky sum of
``wanted - realised`` over the last ``feedback_horizon`` decisions raises or lowers the share
asked of the quantile, so the realised share does not drift on ties or skewed batches.

Before live scores fill the window it holds seed scores: the router's calibration
(``<checkpoint_dir>/<router>/calibration.json``, share -> threshold on reference prompts, see
docs/routing-and-routers.md), turned into representative scores, so that the very first requests are close.
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from routers.calibration import CALIBRATION_FILE, calibration_for

log = logging.getLogger("routegate.targets")
SECONDS_PER_DAY = 86400.0
NOTHING_STRONG = math.nextafter(1.0, math.inf)  # a threshold above every score
EVERYTHING_STRONG = 0.0  # a threshold at or below every score


def seed_scores(calibration: dict[float, float], count: int) -> list[float]:
    """``count`` scores spread like the calibration prompts' scores.

    Share ``s`` maps to the threshold with a fraction ``s`` of scores at or above it, so the
    score at upper-tail fraction ``(i + 0.5) / count`` is interpolated from the table.
    """
    if len(calibration) < 2 or count <= 0:
        return []
    shares = sorted(calibration)
    thresholds = [calibration[share] for share in shares]
    seeds = []
    for index in range(count):
        share = (index + 0.5) / count
        position = bisect.bisect_left(shares, share)
        if position == 0:
            seeds.append(thresholds[0])
        elif position == len(shares):
            seeds.append(thresholds[-1])
        else:
            low, high = shares[position - 1], shares[position]
            weight = (share - low) / (high - low)
            seeds.append(thresholds[position - 1] + weight * (thresholds[position] - thresholds[position - 1]))
    return seeds


class ShareController:
    """Keeps one router's threshold where ``share`` of its recent traffic scores at or above it."""

    def __init__(self, window: int, feedback_horizon: int, seeds: Sequence[float] = ()) -> None:
        self._scores: deque[float] = deque(maxlen=window)
        self._sorted: list[float] = []
        self._decay = 1.0 - 1.0 / feedback_horizon
        self._gain = 4.0 / feedback_horizon
        self._debt = 0.0  # leaky sum of (wanted - realised) strong decisions
        self._recent: deque[bool] = deque(maxlen=window)
        for score in seeds[-window:]:
            self._add(score)

    def _add(self, score: float) -> None:
        if len(self._scores) == self._scores.maxlen:
            oldest = self._scores.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, oldest)]
        self._scores.append(score)
        bisect.insort(self._sorted, score)

    def threshold(self, share: float) -> float:
        """The threshold that sends ``share`` (corrected by the decisions so far) to the strong tier."""
        if share <= 0.0:  # a 0% route or a spent budget: nothing goes strong, whatever is owed
            return NOTHING_STRONG
        if share >= 1.0:  # a 100% route: everything goes strong, also a score below the window's lowest
            return EVERYTHING_STRONG
        wanted = min(1.0, max(0.0, share + self._gain * self._debt))
        if not self._sorted:
            return 1.0 - wanted
        strong_count = round(wanted * len(self._sorted))
        if strong_count == 0:
            return min(1.0, math.nextafter(self._sorted[-1], math.inf))
        return self._sorted[len(self._sorted) - strong_count]

    @property
    def fresh(self) -> bool:
        """Whether no decision has been recorded yet: the window holds its seeds only."""
        return not self._recent

    def observe(self, score: float) -> None:
        """Add a live router score to the window."""
        self._add(score)

    def record(self, strong: bool, share: float) -> None:
        """Count one decision made while ``share`` was wanted."""
        self._debt = self._decay * self._debt + (share - float(strong))
        self._recent.append(strong)

    def forget_debt(self) -> None:
        """Start the feedback afresh (decisions counted here were made by the shared controller)."""
        self._debt = 0.0

    @property
    def realised_share(self) -> float | None:
        """Strong share of the last ``window`` decisions; None before the first."""
        return sum(self._recent) / len(self._recent) if self._recent else None


def utc_day_start(now: float) -> float:
    """The epoch time of the start of ``now``'s UTC day."""
    day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day.timestamp()


def seconds_to_next_utc_day(now: float) -> float:
    """Seconds from ``now`` to the next 00:00 UTC, when the daily budget starts again."""
    return utc_day_start(now) + SECONDS_PER_DAY - now


class DailyBudget:
    """Strong-tier spend against a daily USD budget (this process's part of it), reset at 00:00 UTC.

    ``affordable_share`` projects the rest of the day: routed requests keep arriving at the rate
    seen so far today, each costing on the strong tier what an average request has cost at the
    strong prices; the share that spends exactly what is left is the most the targets may ask.
    """

    def __init__(self, budget_usd: float, clock: Callable[[], float] = time.time) -> None:
        self.budget_usd = budget_usd
        self._clock = clock
        self._started = clock()
        self._day = utc_day_start(self._started)
        self.spent_usd = 0.0
        self._requests = 0
        self._priced_requests = 0
        self._all_strong_usd = 0.0

    def _roll(self) -> float:
        now = self._clock()
        day = utc_day_start(now)
        if day != self._day:  # today's figures only, as the replicas' shared budget keeps them
            self._day = day
            self.spent_usd = 0.0
            self._requests = 0
            self._priced_requests = 0
            self._all_strong_usd = 0.0
        return now

    @property
    def remaining_usd(self) -> float:
        """Budget left today (negative when overspent)."""
        self._roll()
        return self.budget_usd - self.spent_usd

    def count_request(self) -> None:
        """One routed request arrived."""
        self._roll()
        self._requests += 1

    def record_cost(self, tier: str, cost_usd: float, all_strong_usd: float) -> None:
        """A request finished: what it cost on ``tier`` and what it would have cost on the strong tier."""
        self._roll()
        if tier == "strong":
            self.spent_usd += cost_usd
        if all_strong_usd > 0:
            self._priced_requests += 1
            self._all_strong_usd += all_strong_usd

    def load_totals(self, spent_usd: float, requests: int, priced_requests: int, all_strong_usd: float, since: float) -> None:
        """Take today's totals kept elsewhere (the replicas' shared state) as this budget's own."""
        self._roll()
        self.spent_usd, self._requests, self._started = spent_usd, requests, since
        self._priced_requests, self._all_strong_usd = priced_requests, all_strong_usd

    def affordable_share(self) -> float:
        """The largest strong share the rest of today can pay for, in [0, 1]."""
        now = self._roll()
        remaining = self.budget_usd - self.spent_usd
        if remaining <= 0:
            return 0.0
        if not self._priced_requests or not self._requests:
            return 1.0
        observed_since = max(self._day, self._started)
        rate = self._requests / max(now - observed_since, 1.0)
        strong_cost = self._all_strong_usd / self._priced_requests
        projected = rate * (self._day + SECONDS_PER_DAY - now) * strong_cost
        return 1.0 if projected <= remaining else remaining / projected


@dataclass(frozen=True)
class TargetDecision:
    """What a target route compares a score with."""

    target: float
    effective_target: float
    threshold: float


class TooManyRoutes(Exception):
    """A new target route is refused: ``max_routes`` of them are live, or the client's share of them."""


RouteKey = tuple[str, float]  # (router, target share)


ROUTE_IDLE_SECONDS = 600.0  # a route clients opened that has had no request this long gives its place up


class RoutePlaces:
    """The ``max_routes`` places of the target routes that clients open (the ``pinned`` ones,
    those /v1/models lists, take none and are never refused), each client key holding at most a
    quarter of them (at least one), so that one client cannot keep the others from routes of their own."""

    def __init__(self, max_routes: int, pinned: Iterable[RouteKey]) -> None:
        self.max_routes = max_routes
        self.per_client = max(1, max_routes // 4)
        self.pinned = frozenset(pinned)
        self._used: dict[RouteKey, float] = {}  # when each route last had a request
        self._opener: dict[RouteKey, str] = {}  # the client key fingerprint that opened it ("" without keys)

    def use(self, key: RouteKey, now: float) -> None:
        """A request of route ``key`` at ``now``."""
        self._used[key] = now

    def make_room(self, live: dict[RouteKey, Any], key: RouteKey, client: str, now: float) -> None:
        """Make room in ``live`` for new route ``key`` opened by ``client``: when ``client`` (a
        client key) holds its share, or all places are taken, the least recently used of those
        routes goes if it has been idle ``ROUTE_IDLE_SECONDS``, else TooManyRoutes."""
        if key in self.pinned:
            return
        if client:
            own = [route for route in live if self._opener.get(route) == client]  # a pinned route has no opener
            if len(own) >= self.per_client:
                self._free(live, own, now, f"this client key opened {self.per_client} target routes")
        opened = [route for route in live if route not in self.pinned]
        if len(opened) >= self.max_routes:
            self._free(live, opened, now, f"{self.max_routes} target routes are live")
        self._opener[key] = client

    def _free(self, live: dict[RouteKey, Any], among: list[RouteKey], now: float, refusal: str) -> None:
        oldest = min(among, key=lambda route: self._used.get(route, -math.inf))
        if now - self._used.get(oldest, -math.inf) < ROUTE_IDLE_SECONDS:
            raise TooManyRoutes(refusal)
        del live[oldest]
        self._used.pop(oldest, None)
        self._opener.pop(oldest, None)


class Targets:
    """Every ShareController of this process, by (router, target), at most ``max_routes`` of
    them, and the shared daily budget."""

    def __init__(
        self,
        window: int,
        feedback_horizon: int,
        checkpoint_dir: Path,
        budget: DailyBudget | None = None,
        seed_count: int = 200,
        max_routes: int = 32,
        pinned: Iterable[RouteKey] = (),
        clock: Callable[[], float] = time.monotonic,
        scored_pair: Callable[[str], tuple[str, str] | None] = lambda router: None,
    ) -> None:
        self.window = window
        self.feedback_horizon = feedback_horizon
        self.checkpoint_dir = checkpoint_dir
        self.scored_pair = scored_pair  # the pair a router scores, once it is loaded: its calibration's entry
        self._clock = clock
        self.places = RoutePlaces(max_routes, pinned)
        self.budget = budget
        self.seed_count = min(seed_count, window)
        self._controllers: dict[RouteKey, ShareController] = {}
        # router -> (its calibration's mtime, the pair read for, seeds)
        self._seeds: dict[str, tuple[int, tuple[str, str] | None, list[float]]] = {}
        self._unpaired: set[RouteKey] = set()  # routes seeded before their router's pair was known

    def controller(self, router: str, target: float, client: str = "") -> ShareController:
        """The controller of ``router`` at ``target``, seeded from its calibration when first used
        (again once the router has loaded, if it was seeded before the pair it scores was known and
        has decided nothing); TooManyRoutes when it is new and ``client`` (a client key's
        fingerprint) may open no more (``RoutePlaces``)."""
        key, now = (router, target), self._clock()
        controller = self._controllers.get(key)
        if controller is None:
            self.places.make_room(self._controllers, key, client, now)
            self._unpaired.intersection_update(self._controllers)  # a route that gave its place up
        elif key in self._unpaired and self.scored_pair(router) is not None:
            self._unpaired.discard(key)
            controller = None if controller.fresh else controller
        if controller is None:
            controller = ShareController(self.window, self.feedback_horizon, self.seeds(router))
            self._controllers[key] = controller
            if self.scored_pair(router) is None:
                self._unpaired.add(key)
        self.places.use(key, now)
        return controller

    def seeds(self, router: str) -> list[float]:
        """Scores from ``router``'s calibration for the pair it scores that fill a new route's window
        (read again only when the file or the pair changes; none while the file is missing)."""
        path = self.checkpoint_dir / router / CALIBRATION_FILE
        try:
            changed = path.stat().st_mtime_ns
        except OSError:
            return []
        pair = self.scored_pair(router)
        known = self._seeds.get(router)
        if known is None or known[:2] != (changed, pair):
            table, own = calibration_for(path, pair)
            if pair is not None and table and not own:
                log.warning(
                    "%s holds no calibration of %s vs %s: target routes of '%s' start from another pair's thresholds "
                    "until their window fills (routegate calibrate --router %s --strong ... --weak ... --write %s)",
                    path,
                    *pair,
                    router,
                    router,
                    path,
                )
            known = self._seeds[router] = (changed, pair, seed_scores(table, self.seed_count))
        return known[2]

    def effective_target(self, target: float) -> float:
        """``target``, tightened when the daily budget cannot pay for it."""
        if self.budget is None:
            return target
        return min(target, self.budget.affordable_share())

    def decide(self, router: str, target: float) -> TargetDecision:
        """The threshold a score on this route is compared with now (nothing is recorded)."""
        effective = self.effective_target(target)
        return TargetDecision(target, effective, self.controller(router, target).threshold(effective))

    def record(self, router: str, target: float, effective_target: float, strong: bool, score: float | None = None) -> None:
        """Count a decision on this route (scored, sticky or forced) whose request an upstream
        answered; its ``score``, when it was scored, joins the window. Nothing for a route that
        gave its place up while the request ran (``RoutePlaces``): the answer stands."""
        controller = self._controllers.get((router, target))
        if controller is None:
            return
        if score is not None:
            controller.observe(score)
        controller.record(strong, effective_target)

    def realised_share(self, router: str, target: float) -> float | None:
        """The route's strong share over its window of recent decisions (None once it gave its place up)."""
        controller = self._controllers.get((router, target))
        return controller.realised_share if controller is not None else None
