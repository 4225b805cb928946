"""Routing among several models with one knob: the pure policy, no I/O.

Candidates are sorted by price (cheapest first). For a threshold ``t``, a prompt goes to the
cheapest candidate whose predicted probability of being beaten by the most capable candidate is
below ``t``; the most capable candidate itself is always acceptable, so nothing dearer than it is
ever chosen. With two models (weak cheaper, strong most capable) this is exactly the two-tier
rule: the weak model when ``P(strong beats weak) < t``, i.e. the strong one when ``score >= t``.

Routers give per-model predictions in one of two forms, both turned into ``beaten[i, m]`` =
P(most capable beats m on prompt i):

* logits (``mf``'s quality deltas, ``lookahead``'s routing logits): ``sigmoid(q_best - q_m)``;
* scores in [0, 1] (a kNN estimate of each model's score): ``(1 + s_best - s_m) / 2``, the soft
  pairwise target ``mf`` is trained on.

Target routes generalise "share of strong calls" to "share of the all-best-model cost":
``threshold_for_cost_share`` picks the threshold whose routing of a reference prompt set spends
that share of what sending every prompt to the most capable model would.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def most_capable(predicted: np.ndarray) -> int:
    """Column of the model with the highest mean predicted quality over the prompts, (prompts, models)."""
    return int(np.argmax(np.asarray(predicted, dtype=np.float64).mean(axis=0)))


def beaten_from_logits(logits: np.ndarray, best: int) -> np.ndarray:
    """P(best beats m) = sigmoid(logit_best - logit_m), (prompts, models)."""
    logits = np.asarray(logits, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-(logits[:, [best]] - logits)))


def beaten_from_scores(scores: np.ndarray, best: int) -> np.ndarray:
    """P(best beats m) = (1 + s_best - s_m) / 2 for predicted scores in [0, 1], (prompts, models)."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.clip((1.0 + scores[:, [best]] - scores) / 2.0, 0.0, 1.0)


def price_order(prices: Sequence[float]) -> np.ndarray:
    """Candidate columns from cheapest to dearest (ties keep their given order)."""
    return np.argsort(np.asarray(prices, dtype=np.float64), kind="stable")


def choose(beaten: np.ndarray, prices: Sequence[float], best: int, threshold: float) -> np.ndarray:
    """The chosen column per prompt: the cheapest candidate with ``beaten < threshold``, else ``best``."""
    beaten = np.asarray(beaten, dtype=np.float64)
    order = price_order(prices)
    acceptable = beaten[:, order] < threshold
    acceptable[:, int(np.nonzero(order == best)[0][0])] = True
    return order[np.argmax(acceptable, axis=1)]


def change_points(beaten: np.ndarray, prices: Sequence[float], best: int) -> np.ndarray:
    """Every threshold at which some prompt's choice changes, descending (cheapest routing first).

    A prompt's choice at ``t`` is the first candidate in price order whose running minimum of
    ``beaten`` is below ``t``, so only those running minima (up to the most capable) matter.
    """
    beaten = np.asarray(beaten, dtype=np.float64)
    order = price_order(prices)
    upto = int(np.nonzero(order == best)[0][0])
    if upto == 0:
        return np.zeros(0)
    running = np.minimum.accumulate(beaten[:, order[:upto]], axis=1)
    return np.unique(running)[::-1]


def sweep(beaten: np.ndarray, prices: Sequence[float], best: int, limit: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Thresholds in [0, 1] from "cheapest routing" to "all to the most capable" (0), descending,
    and the choices at each, (thresholds,) and (thresholds, prompts); the change points are
    thinned evenly to at most ``limit``."""
    points = change_points(beaten, prices, best)
    if len(points) > limit:
        points = points[np.linspace(0, len(points) - 1, limit).round().astype(int)]
    top = min(1.0, float(np.nextafter(points[0], 2.0))) if len(points) else 1.0
    thresholds = np.unique(np.concatenate([[top], points, [0.0]]))[::-1]
    return thresholds, np.stack([choose(beaten, prices, best, t) for t in thresholds])


def picked(values: np.ndarray, choice: np.ndarray) -> np.ndarray:
    """``values[i, choice[i]]`` per prompt, for a (prompts, models) matrix of qualities or costs."""
    return np.asarray(values)[np.arange(len(choice)), choice]


def cost_share_curve(
    beaten: np.ndarray, costs: np.ndarray, best: int, prices: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Every threshold at which the routing of these prompts changes, from "cheapest routing" to
    "all to ``best``" (descending, ending at 0), and the share of the all-best cost each spends.
    ``costs`` is (prompts, models) in USD; ``prices`` orders the candidates as the routing does
    (default: each model's mean cost).

    Exact and without routing the prompts once per threshold: a prompt's choice at ``t`` is the
    first candidate whose running minimum of ``beaten`` is below ``t`` (``change_points``), so
    lowering ``t`` to one of its running minima moves it one candidate on, and the cost curve is
    the cumulative sum of those moves."""
    beaten, costs = np.asarray(beaten, dtype=np.float64), np.asarray(costs, dtype=np.float64)
    order = price_order(costs.mean(axis=0) if prices is None else prices)
    upto = int(np.nonzero(order == best)[0][0])
    all_best = costs[:, best].sum() or 1.0
    cheapest = np.concatenate([costs[:, order[:upto]], costs[:, [best]]], axis=1)  # the cost at each candidate
    if upto == 0:  # the most capable is the cheapest: every threshold sends every prompt to it
        return np.array([1.0, 0.0]), np.full(2, cheapest[:, 0].sum() / all_best)
    running = np.minimum.accumulate(beaten[:, order[:upto]], axis=1)
    points, where = np.unique(running.ravel(), return_inverse=True)
    moved = np.bincount(where.ravel(), weights=np.diff(cheapest, axis=1).ravel(), minlength=len(points))
    points, spent = points[::-1], (cheapest[:, 0].sum() + np.cumsum(moved[::-1])) / all_best
    top = min(1.0, float(np.nextafter(points[0], 2.0)))
    if top > points[0]:  # above every running minimum: the cheapest routing
        points, spent = np.concatenate([[top], points]), np.concatenate([[cheapest[:, 0].sum() / all_best], spent])
    if points[-1] > 0.0:  # below every running minimum: all to best, as at the lowest one
        points, spent = np.append(points, 0.0), np.append(spent, spent[-1])
    return points, spent


def threshold_on_curve(curve: tuple[np.ndarray, np.ndarray], share: float) -> float:
    """The threshold of a ``cost_share_curve`` that spends closest to ``share`` (ties: the cheaper routing)."""
    if not 0.0 <= share <= 1.0:
        raise ValueError("share must be in [0, 1]")
    thresholds, spent = curve
    return float(thresholds[int(np.argmin(np.abs(spent - share)))])


def threshold_for_cost_share(
    beaten: np.ndarray, costs: np.ndarray, best: int, share: float, prices: Sequence[float] | None = None
) -> float:
    """The threshold whose routing of these prompts costs closest to ``share`` of sending every
    prompt to ``best`` (ties: the cheaper routing); see ``cost_share_curve``."""
    return threshold_on_curve(cost_share_curve(beaten, costs, best, prices), share)
