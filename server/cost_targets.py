"""Target routes among more than two models: ``router-<router>-<percent>%`` keeps the cost of the
routed traffic near that share of the all-best-model cost (``router-mf-30%`` spends about 30% of
what sending every request to the most capable model would).

One ``CostShareController`` per router and target, per process (with Redis, replicas do not
share it; the two-tier controllers of server/shared_targets.py are unchanged). It keeps the
``window`` most recent prompts' probabilities of being beaten by the most capable model; its
threshold is the one whose routing of that window spends the wanted share of the all-best cost
(``routers.multi_model.cost_share_curve``, computed again every 2% of the window, and read for the
share wanted on each request), each prompt costed at each model with the mean token counts
answered so far. Feedback from the realised share (the answered requests' cost over what the
most capable model would have charged for their tokens, each request counting by its size)
corrects the share asked, as the two-tier controller's feedback does. Until prompts arrive the threshold is ``1 - share``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from routers.multi_model import cost_share_curve, threshold_on_curve
from server.targets import RouteKey, RoutePlaces

#: window growth (as a share of the window) after which the threshold is computed again
RECOMPUTE_EVERY = 0.02
ABOVE_EVERY_BEATEN = float(np.nextafter(1.0, 2.0))  # a threshold that accepts the cheapest model
ONLY_THE_BEST = 0.0  # a threshold that accepts no model but the most capable


class CostShareController:
    """Keeps one route's threshold where its window of prompts would spend ``share`` of the all-best cost."""

    def __init__(self, window: int, feedback_horizon: int, best: int) -> None:
        self.best = best
        self._beaten: deque[tuple[float, ...]] = deque(maxlen=window)
        self._recent: deque[tuple[float, float]] = deque(maxlen=window)  # (cost, all-best cost)
        self._recent_totals = [0.0, 0.0]  # their sums
        self._decay = 1.0 - 1.0 / feedback_horizon
        self._gain = 4.0 / feedback_horizon
        self._debt = 0.0  # leaky sum of (wanted - realised) cost, in typical all-best costs
        self._step = max(1, round(window * RECOMPUTE_EVERY))
        self._curve: tuple[np.ndarray, np.ndarray] | None = None  # thresholds and the cost shares they spend
        self._unseen = 0  # prompts observed since the curve

    def threshold(self, share: float, unit_costs: Sequence[float], prices: Sequence[float]) -> float:
        """The threshold that spends ``share`` (corrected by the feedback) of the all-best cost,
        with ``unit_costs`` each model's cost of a typical request and ``prices`` the order in
        which routing tries the models (input plus output price, as the ladder)."""
        if share <= 0.0:
            return ABOVE_EVERY_BEATEN
        if share >= 1.0:  # a 100% route: the most capable for every prompt, also one beaten less than any so far
            return ONLY_THE_BEST
        wanted = min(1.0, max(0.0, share + self._gain * self._debt))
        if not self._beaten:
            return 1.0 - wanted
        if self._curve is None or self._unseen >= self._step:  # the feedback moves ``wanted`` along it
            beaten = np.array(self._beaten)
            costs = np.tile(np.asarray(unit_costs, dtype=np.float64), (len(beaten), 1))
            self._curve = cost_share_curve(beaten, costs, self.best, prices)
            self._unseen = 0
        return threshold_on_curve(self._curve, wanted)

    def observe(self, beaten: Sequence[float]) -> None:
        """A scored prompt's P(most capable beats m) per model joins the window."""
        self._beaten.append(tuple(beaten))
        self._unseen += 1

    def record(self, cost: float, all_best_cost: float, share: float) -> None:
        """One answered request of this route, made while ``share`` was wanted. It counts by its
        size: what it spent beyond ``share`` of its all-best cost, in typical all-best costs of the
        window, so that a long request sent to the most capable model weighs what it costs (the
        target is a share of the cost, not an average of each request's share)."""
        if all_best_cost <= 0:
            return
        if len(self._recent) == self._recent.maxlen:
            dropped = self._recent[0]
            self._recent_totals = [self._recent_totals[0] - dropped[0], self._recent_totals[1] - dropped[1]]
        self._recent.append((cost, all_best_cost))
        self._recent_totals = [self._recent_totals[0] + cost, self._recent_totals[1] + all_best_cost]
        typical = self._recent_totals[1] / len(self._recent)
        self._debt = self._decay * self._debt + (share * all_best_cost - cost) / typical

    @property
    def realised_share(self) -> float | None:
        """Cost over all-best cost of the window's answered requests; None before the first."""
        cost, all_best = self._recent_totals
        return cost / all_best if all_best > 0 else None


class CostTargets:
    """Every CostShareController of this process, at most ``max_routes``, and the mean token
    counts that cost a typical request on each model."""

    def __init__(
        self,
        window: int,
        feedback_horizon: int,
        best: int,
        prices: Sequence[tuple[float, float]],
        max_routes: int,
        pinned: Iterable[RouteKey] = (),
        clock: Callable[[], float] = time.monotonic,
    ):
        self.window = window
        self.feedback_horizon = feedback_horizon
        self.best = best
        self.prices = list(prices)  # (input, output) USD per 1M tokens, ladder order
        self.order = [input_price + output_price for input_price, output_price in self.prices]  # as routing tries them
        self.places = RoutePlaces(max_routes, pinned)
        self._controllers: dict[RouteKey, CostShareController] = {}
        self._clock = clock
        self._tokens = [1.0, 1.0]  # prompt and completion tokens answered (a prior of one each)
        self._answers = 1

    def controller(self, router: str, target: float, client: str = "") -> CostShareController:
        """The controller of ``router`` at ``target``; TooManyRoutes when it is new and ``client`` (a
        client key's fingerprint) may open no more (``RoutePlaces``)."""
        key, now = (router, target), self._clock()
        controller = self._controllers.get(key)
        if controller is None:
            self.places.make_room(self._controllers, key, client, now)
            controller = self._controllers[key] = CostShareController(self.window, self.feedback_horizon, self.best)
        self.places.use(key, now)
        return controller

    def unit_costs(self) -> list[float]:
        """Each model's cost of a request with the mean token counts answered so far."""
        prompt, completion = (count / self._answers for count in self._tokens)
        return [prompt * input_price + completion * output_price for input_price, output_price in self.prices]

    def threshold(self, router: str, target: float, share: float) -> float:
        """The threshold a prompt on this route is compared with now, aiming at ``share``."""
        return self.controller(router, target).threshold(share, self.unit_costs(), self.order)

    def record(
        self,
        router: str,
        target: float,
        share: float,
        beaten: Sequence[float] | None,
        costs: tuple[float, float],
        tokens: tuple[int, int] | None,
    ) -> None:
        """An answered request of this route: its prompt's ``beaten`` (when scored), its cost and
        all-best cost, and its token counts (reported or estimated; None without either). The
        route's own books only while it holds its place (``RoutePlaces``): the answer stands."""
        if tokens is not None:
            self._tokens = [self._tokens[0] + tokens[0], self._tokens[1] + tokens[1]]
            self._answers += 1
        controller = self._controllers.get((router, target))
        if controller is None:
            return
        if beaten is not None:
            controller.observe(beaten)
        controller.record(*costs, share)

    def realised_share(self, router: str, target: float) -> float | None:
        controller = self._controllers.get((router, target))
        return controller.realised_share if controller is not None else None
