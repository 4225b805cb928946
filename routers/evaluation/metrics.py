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

#: a pair's APGR is reported only when the strong model's lead on the prompts is at least this many
#: standard errors: PGR divides by that lead, so a lead within noise makes APGR meaningless (3.2 or -1)
MIN_GAP_Z = 2.0


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

    @property
    def gap(self) -> float:
        """The strong model's mean lead over the weak one."""
        return float((self.strong - self.weak).mean())

    @property
    def gap_z(self) -> float:
        """The lead in standard errors of the per-prompt differences' mean (inf when they never vary)."""
        differences = self.strong - self.weak
        if len(differences) < 2:
            return 0.0
        lead = float(differences.mean())
        error = float(differences.std(ddof=1)) / np.sqrt(len(differences))
        return lead / error if error > 0 else (np.inf if lead > 0 else 0.0)

    @property
    def separable(self) -> bool:
        """Whether the strong model leads by more than noise (``MIN_GAP_Z``), so APGR means something."""
        return self.gap > 0 and self.gap_z >= MIN_GAP_Z


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
    return (means - quality.weak.mean()) / quality.gap


def apgr(scores: Scores, quality: PairQuality) -> float:
    """Average PGR over strong-call shares from 0 to 1 (area under the PGR curve); NaN when the
    strong model does not lead on these prompts (no gap to recover)."""
    if quality.gap <= 0:
        return float("nan")
    shares, means = routing_curve(scores, quality)
    return float(np.trapezoid(pgr(means, quality), shares))


PGR_TOLERANCE = 1e-9


def cpt(scores: Scores, quality: PairQuality, target_pgr: float) -> float:
    """Call-performance threshold: the smallest strong-call share whose PGR reaches ``target_pgr``
    (NaN when the strong model does not lead on these prompts)."""
    if quality.gap <= 0:
        return float("nan")
    shares, means = routing_curve(scores, quality)
    gaps = pgr(means, quality)
    # PGR comes from a running sum: a share exactly at the target (common with 0/1 scores) may be
    # computed a rounding error below it, and must still count
    reached = np.nonzero(gaps >= target_pgr - PGR_TOLERANCE)[0]
    if len(reached) == 0:
        return 1.0
    index = reached[0]
    if index == 0 or gaps[index] <= target_pgr + PGR_TOLERANCE:
        return float(shares[index])
    low_share, high_share = shares[index - 1], shares[index]
    low_gap, high_gap = gaps[index - 1], gaps[index]
    return float(low_share + (target_pgr - low_gap) * (high_share - low_share) / (high_gap - low_gap))
