"""What judged pairs say about routing quality: regret rate, waste rate and the quality retained
(the PGR the verdicts imply) with a 95% confidence interval. The Grafana panels compute the same
figures in PromQL from ``routegate_judgements_total`` (docs/feedback.md).

Each judged request scores its two answers 1/0 (one judged better) or equal (a tie), so over the
judged requests, with a = strong chosen and judged better, b = strong chosen and weak judged
better, c = weak chosen and strong judged better, d = weak chosen and judged better:

    PGR = (routed - weak) / (strong - weak) = (a - b) / ((a + c) - (b + d))

a ratio estimate whose standard error (delta method) is
``sqrt((a + b)(1 - PGR)^2 + (c + d) PGR^2) / |a + c - b - d|``; the interval is PGR +- 1.96 SE.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

Z95 = 1.96  # as in the PromQL of the dashboard


@dataclass
class Verdicts:
    """Judged pairs of one router, by chosen tier and verdict (from the chosen tier's side)."""

    strong_chosen_better: int = 0
    strong_tie: int = 0
    strong_other_better: int = 0
    weak_chosen_better: int = 0
    weak_tie: int = 0
    weak_other_better: int = 0
    unparsable: int = 0

    def add(self, chosen_tier: str, verdict: str, count: int = 1) -> None:
        """Count ``count`` pairs with this chosen tier and verdict."""
        name = "unparsable" if verdict == "unparsable" else f"{chosen_tier}_{verdict}"
        setattr(self, name, getattr(self, name) + count)

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, str]]) -> Verdicts:
        """Counts of (chosen tier, verdict) pairs."""
        counts = cls()
        for chosen_tier, verdict in pairs:
            counts.add(chosen_tier, verdict)
        return counts

    @property
    def judged(self) -> int:
        """Pairs with a verdict (unparsable ones left out)."""
        return (
            self.strong_chosen_better
            + self.strong_tie
            + self.strong_other_better
            + self.weak_chosen_better
            + self.weak_tie
            + self.weak_other_better
        )


@dataclass
class Quality:
    """The figures of one set of verdicts; None where there is nothing to divide by."""

    judged: int
    regret_rate: float | None
    waste_rate: float | None
    retained: float | None
    retained_low: float | None
    retained_high: float | None


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def quality(counts: Verdicts) -> Quality:
    """Regret rate (weak chosen, strong judged better), waste rate (strong chosen, weak as good or
    better) and the quality retained with its 95% interval."""
    a, b = counts.strong_chosen_better, counts.strong_other_better
    c, d = counts.weak_other_better, counts.weak_chosen_better
    regret = _ratio(c, c + d + counts.weak_tie)
    waste = _ratio(b + counts.strong_tie, a + b + counts.strong_tie)
    gap = a + c - b - d
    retained = _ratio(a - b, gap)
    low = high = None
    if retained is not None:
        half = Z95 * math.sqrt((a + b) * (1 - retained) ** 2 + (c + d) * retained**2) / abs(gap)
        low, high = retained - half, retained + half
    return Quality(counts.judged, regret, waste, retained, low, high)
