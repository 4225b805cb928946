"""Quality/cost metrics of a strong/weak router (RouteLLM's PGR, APGR and CPT), by exact sweep.

Routing the prompts whose score is at least a threshold to the strong model gives one point
(strong-call share, quality) per distinct score; mixing two neighbouring thresholds at random
reaches every point on the segment between them, so the curve is their linear interpolation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Scores = Sequence[float] | np.ndarray  # one value per prompt


@dataclass(frozen=True)
class PairQuality:
    """Per-prompt quality of the strong and the weak model on the same prompts."""

    strong: np.ndarray
    weak: np.ndarray

    @classmethod
    def of(cls, strong: Scores, weak: Scores) -> PairQuality:
        return cls(np.asarray(strong, dtype=np.float64), np.asarray(weak, dtype=np.float64))

    @property
    def oracle_mean(self) -> float:
        """Mean of the better of the two answers per prompt."""
        return float(np.maximum(self.strong, self.weak).mean())


def routing_curve(scores: Scores, quality: PairQuality) -> tuple[np.ndarray, np.ndarray]:
    """Strong-call shares and mean qualities at every achievable threshold, from all-weak to all-strong."""
    values = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-values, kind="stable")
    gain = (quality.strong - quality.weak)[order]
    cumulative = np.concatenate([[0.0], np.cumsum(gain)])
    sorted_scores = values[order]
    # cut only between distinct scores: tied prompts go to the same tier
    cuts = np.concatenate([[0], np.nonzero(np.diff(sorted_scores))[0] + 1, [len(scores)]])
    shares = cuts / len(scores)
    means = quality.weak.mean() + cumulative[cuts] / len(scores)
    return shares, means


def pgr(means: np.ndarray, quality: PairQuality) -> np.ndarray:
    """Performance gap recovered: 0 at the weak model's mean quality, 1 at the strong model's."""
    weak_mean, strong_mean = quality.weak.mean(), quality.strong.mean()
    return (means - weak_mean) / (strong_mean - weak_mean)


def apgr(scores: Scores, quality: PairQuality) -> float:
    """Average PGR over strong-call shares from 0 to 1 (area under the PGR curve)."""
    shares, means = routing_curve(scores, quality)
    return float(np.trapezoid(pgr(means, quality), shares))


def cpt(scores: Scores, quality: PairQuality, target_pgr: float) -> float:
    """Call-performance threshold: the smallest strong-call share whose PGR reaches ``target_pgr``."""
    shares, means = routing_curve(scores, quality)
    gaps = pgr(means, quality)
    reached = np.nonzero(gaps >= target_pgr)[0]
    if len(reached) == 0:
        return 1.0
    index = reached[0]
    if index == 0:
        return float(shares[0])
    low_share, high_share = shares[index - 1], shares[index]
    low_gap, high_gap = gaps[index - 1], gaps[index]
    return float(low_share + (target_pgr - low_gap) * (high_share - low_share) / (high_gap - low_gap))
